"""Provider keys: one encrypted key per (user, provider). Never a plaintext column.

The ciphertext is an AES-256-GCM envelope from `byok.crypto`, bound by its associated data to
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
    ciphertext = models.BinaryField(help_text="AES-256-GCM envelope (byok.crypto). Never shown.")
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


# --- OAuth connections ------------------------------------------------------------------------


class ConnectionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    NEEDS_REAUTH = "needs_reauth", "Needs reconnect"
    ERROR = "error", "Error"


def oauth_access_token_purpose(*, user_id: int, integration: str) -> str:
    """Associated data for a connection's access token: binds it to its owner and integration."""
    return f"niyra:v1:oauth_access:{user_id}:{integration}"


def oauth_refresh_token_purpose(*, user_id: int, integration: str) -> str:
    return f"niyra:v1:oauth_refresh:{user_id}:{integration}"


def oauth_code_verifier_purpose(*, user_id: int, integration: str, state_hash: str) -> str:
    return f"niyra:v1:oauth_pkce:{user_id}:{integration}:{state_hash}"


class OAuthConnection(models.Model):
    """A user's OAuth grant for one integration (gmail, slack, ...): encrypted tokens + expiry.

    The refresh daemon keeps `status="active"` connections alive: every tick selects the ones
    expiring before `now + interval + margin` through `oauth_connection_due_idx` (a partial
    index on `expires_at` of active rows) and refreshes each under its row lock. `expires_at`
    is NULL only for a token that does not expire and cannot be refreshed (see byok.oauth).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oauth_connections")
    integration = models.CharField(max_length=32, help_text="A name from settings.OAUTH_INTEGRATIONS.")
    status = models.CharField(max_length=16, choices=ConnectionStatus.choices, default=ConnectionStatus.ACTIVE)
    access_token_ciphertext = models.BinaryField(help_text="AES-256-GCM envelope (byok.crypto). Never shown.")
    refresh_token_ciphertext = models.BinaryField(
        null=True, blank=True, help_text="AES-256-GCM envelope, or NULL when the provider issued none. Never shown."
    )
    encryption_key_id = models.CharField(
        max_length=32, db_index=True, help_text="Keyring key id both token ciphertexts are sealed with."
    )
    scopes = models.CharField(max_length=1000, blank=True, help_text="Granted scopes, space-separated.")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When the access token expires.")
    token_issued_at = models.DateTimeField(help_text="When the current access token was obtained.")
    connected_at = models.DateTimeField()
    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error_code = models.CharField(max_length=48, blank=True, help_text="Error catalogue code of the last failure.")
    last_error_reason = models.CharField(
        max_length=120, blank=True, help_text="What the provider said (its error code or HTTP status). Never a token."
    )
    last_error_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "OAuth connection"
        ordering = ("user_id", "integration")
        constraints = [
            models.UniqueConstraint(fields=["user", "integration"], name="oauth_connection_one_per_integration"),
            models.CheckConstraint(
                condition=models.Q(status__in=ConnectionStatus.values), name="oauth_connection_known_status"
            ),
        ]
        indexes = [
            # The refresh tick's one query: active rows by expiry (partial: the others never refresh).
            models.Index(
                fields=["expires_at"],
                name="oauth_connection_due_idx",
                condition=models.Q(status="active"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.integration} connection of user {self.user_id} ({self.status})"

    @property
    def access_token_purpose(self) -> str:
        return oauth_access_token_purpose(user_id=self.user_id, integration=self.integration)

    @property
    def refresh_token_purpose(self) -> str:
        return oauth_refresh_token_purpose(user_id=self.user_id, integration=self.integration)


class OAuthAuthorizationRequest(models.Model):
    """A connect flow in progress: what the callback needs to finish it (state + PKCE verifier).

    Only `sha256(state)` is stored; the verifier is encrypted. A row is used once (`consumed_at`)
    and is good for `OAUTH_AUTHORIZATION_TTL` minutes; the refresh tick purges old ones.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    integration = models.CharField(max_length=32)
    state_hash = models.CharField(max_length=64, unique=True)
    code_verifier_ciphertext = models.BinaryField(help_text="AES-256-GCM envelope (byok.crypto). Never shown.")
    encryption_key_id = models.CharField(max_length=32, db_index=True)
    redirect_uri = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    consumed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "OAuth authorization request"
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.integration} authorization for user {self.user_id}"

    @property
    def code_verifier_purpose(self) -> str:
        return oauth_code_verifier_purpose(
            user_id=self.user_id, integration=self.integration, state_hash=self.state_hash
        )
