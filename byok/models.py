"""Provider keys: one encrypted key per (user, provider). Never a plaintext column.

The ciphertext is an AES-256-GCM envelope from `core.crypto`, bound by its associated data to
`niyra:v1:provider_key:{user_id}:{provider}`: copied to another row it fails to open.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from providers import Provider


class KeyStatus(models.TextChoices):
    VALID = "valid", "Valid"
    INVALID = "invalid", "Invalid"
    RATE_LIMITED = "rate_limited", "Rate limited"
    QUOTA_EXHAUSTED = "quota_exhausted", "Quota exhausted"
    UNVERIFIED = "unverified", "Unverified"
    NEEDS_REENTRY = "needs_reentry", "Needs re-entry"


def provider_key_purpose(*, user_id: int, provider: str) -> str:
    """Associated data for a provider key's ciphertext: binds it to its owner and provider."""
    return f"niyra:v1:provider_key:{user_id}:{provider}"


class ProviderKey(models.Model):
    """A user's own Anthropic or OpenAI API key, encrypted at rest.

    `hint` (`sk-ant-…AbCd`) and `fingerprint` are what people see; the key itself is only ever
    decrypted inside the call that uses it.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="provider_keys")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    ciphertext = models.BinaryField(help_text="AES-256-GCM envelope (core.crypto). Never shown.")
    encryption_key_id = models.CharField(
        max_length=32, db_index=True, help_text="Keyring key id the ciphertext is sealed with."
    )
    hint = models.CharField(max_length=32, help_text="Prefix and last four characters, e.g. sk-ant-…AbCd.")
    fingerprint = models.CharField(max_length=16, help_text="Keyed hash of the key: tells two keys apart.")
    status = models.CharField(max_length=16, choices=KeyStatus.choices, default=KeyStatus.UNVERIFIED)
    last_tested_at = models.DateTimeField(null=True, blank=True)
    last_error_code = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("user_id", "provider")
        constraints = [
            models.UniqueConstraint(fields=["user", "provider"], name="provider_key_one_per_provider"),
            models.CheckConstraint(
                condition=models.Q(provider__in=Provider.values), name="provider_key_known_provider"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_provider_display()} key {self.hint}"

    @property
    def purpose(self) -> str:
        return provider_key_purpose(user_id=self.user_id, provider=self.provider)
