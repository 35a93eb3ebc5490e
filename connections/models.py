"""OAuth connections: a user's grant for one integration (gmail, slack, ...), its encrypted
tokens, and the connect flows in progress (state + PKCE).

The token ciphertexts are AES-256-GCM envelopes from `core.crypto`, each bound by its associated
data to its owner and integration (e.g. `niyra:v1:oauth_refresh:{user_id}:{integration}`): copied
to another row they fail to open.

The tables keep the names they were created with when these models lived in `byok`
(`db_table`): the move to this app was a state-only migration, so no row was copied and no
running process lost its table during the deploy.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


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
    is NULL only for a token that does not expire and cannot be refreshed (see connections.oauth).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oauth_connections")
    integration = models.CharField(max_length=32, help_text="A name from settings.OAUTH_INTEGRATIONS.")
    status = models.CharField(max_length=16, choices=ConnectionStatus.choices, default=ConnectionStatus.ACTIVE)
    access_token_ciphertext = models.BinaryField(help_text="AES-256-GCM envelope (core.crypto). Never shown.")
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
    last_refresh_margin_seconds = models.IntegerField(
        null=True,
        blank=True,
        help_text="How long before the old token's expiry the last refresh happened (negative: after it "
        "lapsed). NULL: not refreshed since connecting, or the old token did not expire.",
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error_code = models.CharField(max_length=48, blank=True, help_text="Error catalogue code of the last failure.")
    last_error_reason = models.CharField(
        max_length=120, blank=True, help_text="What the provider said (its error code or HTTP status). Never a token."
    )
    last_error_at = models.DateTimeField(null=True, blank=True)
    status_changes = models.PositiveIntegerField(
        default=0,
        help_text="How many times the connection stopped or started working again (needs_reauth, error, "
        "recovered): each transition's number names its one notification.",
    )
    status_changed_at = models.DateTimeField(
        null=True, blank=True, help_text="When it last stopped or started working again (NULL: never changed)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "byok_oauthconnection"
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
    code_verifier_ciphertext = models.BinaryField(help_text="AES-256-GCM envelope (core.crypto). Never shown.")
    encryption_key_id = models.CharField(max_length=32, db_index=True)
    redirect_uri = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    consumed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "byok_oauthauthorizationrequest"
        verbose_name = "OAuth authorization request"
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.integration} authorization for user {self.user_id}"

    @property
    def code_verifier_purpose(self) -> str:
        return oauth_code_verifier_purpose(
            user_id=self.user_id, integration=self.integration, state_hash=self.state_hash
        )
