"""Provider keys: one encrypted key per (user, provider). Never a plaintext column.

The ciphertext is an AES-256-GCM envelope from `core.crypto`, bound by its associated data to
`niyra:v1:provider_key:{user_id}:{provider}`: copied to another row it fails to open.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core.errors import KEY_INVALID, KEY_NEEDS_REENTRY, KEY_QUOTA_EXHAUSTED, KEY_RATE_LIMITED
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
    last_tested_at = models.DateTimeField(
        null=True, blank=True, help_text="Last check its owner asked for (save or Test key)."
    )
    last_error_code = models.CharField(max_length=32, blank=True)
    last_used_at = models.DateTimeField(
        null=True, blank=True, help_text="Last routed call through this key (to the minute: byok.key_sql)."
    )
    last_checked_at = models.DateTimeField(
        null=True, blank=True, help_text="Last probe of any kind: save, Test key or the scheduled check."
    )
    next_check_at = models.DateTimeField(null=True, blank=True, help_text="When the scheduled check probes it next.")
    rate_limited_until = models.DateTimeField(null=True, blank=True)
    status_changes = models.PositiveIntegerField(
        default=0, help_text="Counts status changes: names each one, so it is notified once."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("user_id", "provider")
        indexes = [
            # The health tick: the keys of one provider that are due, oldest first.
            models.Index(
                fields=["provider", "next_check_at"],
                name="provider_key_due",
                condition=models.Q(next_check_at__isnull=False),
            ),
        ]
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


class CheckSource(models.TextChoices):
    SAVE = "save", "Saved"
    TEST = "test", "Test key"
    SCHEDULED = "scheduled", "Scheduled check"
    ROUTED = "routed", "Routed call"


class KeyCheck(models.Model):
    """One check of a key and what it said: every probe (save, Test key, the scheduled check),
    and each routed call that changed the key's status. A short history (byok.services prunes
    it); never key material."""

    provider_key = models.ForeignKey(ProviderKey, on_delete=models.CASCADE, related_name="checks")
    checked_at = models.DateTimeField()
    source = models.CharField(max_length=16, choices=CheckSource.choices)
    status = models.CharField(max_length=16, choices=KeyStatus.choices, help_text="The key's status after this check.")
    error_code = models.CharField(max_length=32, blank=True, help_text="What the provider said, when not ok.")
    fingerprint = models.CharField(max_length=16, help_text="Which key was checked (rotations keep the row).")
    latency_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ("-checked_at", "-id")
        indexes = [models.Index(fields=["provider_key", "-checked_at", "-id"], name="key_check_recent")]

    def __str__(self) -> str:
        return f"{self.get_source_display()} {self.checked_at:%Y-%m-%d %H:%M}: {self.status}"

    @property
    def inconclusive(self) -> bool:
        """The provider gave no answer about the key (unreachable, an error of its own): the
        key's status stood as it was."""
        return self.error_code not in _ANSWERS_ABOUT_A_KEY


# What a provider can say about a key (a KeyCheck's error_code); "" is "it works".
_ANSWERS_ABOUT_A_KEY = frozenset(
    {"", KEY_INVALID.code, KEY_RATE_LIMITED.code, KEY_QUOTA_EXHAUSTED.code, KEY_NEEDS_REENTRY.code}
)
