"""Reads for provider keys and OAuth connections. Opening a secret (`provider_key_plaintext`,
`connection_access_token`) is for the call that uses it."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from byok import oauth
from byok.crypto import DecryptionError, get_keyring
from byok.models import ConnectionStatus, KeyStatus, OAuthConnection, ProviderKey
from core.errors import (
    KEY_NEEDS_REENTRY,
    OAUTH_CONNECTION_ERROR,
    OAUTH_CONNECTION_NOT_FOUND,
    OAUTH_NEEDS_REAUTH,
    OAUTH_PROVIDER_UNAVAILABLE,
    OAUTH_TOKEN_UNREADABLE,
    NiyraError,
)

# Statuses the dispatcher may route through. Rate-limited and out-of-quota keys are genuine: the
# provider will answer (or refuse) the call itself, and the user sees its error.
USABLE_STATUSES = frozenset({KeyStatus.VALID, KeyStatus.RATE_LIMITED, KeyStatus.QUOTA_EXHAUSTED, KeyStatus.UNVERIFIED})


def provider_key_list(*, user: User) -> QuerySet[ProviderKey]:
    return ProviderKey.objects.filter(user=user).order_by("provider")


def provider_key_get(*, user: User, provider: str) -> ProviderKey | None:
    return ProviderKey.objects.filter(user=user, provider=provider).first()


def provider_key_effective_status(provider_key: ProviderKey) -> str:
    """The status to show: "needs_reentry" when the keyring no longer holds the key id the
    ciphertext was sealed with (a cheap check: nothing is decrypted to list keys)."""
    if not get_keyring().can_open_kid(provider_key.encryption_key_id):
        return KeyStatus.NEEDS_REENTRY
    return provider_key.status


def provider_key_usable(*, user: User, provider: str) -> ProviderKey | None:
    """The user's key for `provider` if routing may use it (plan checks are the caller's)."""
    key = provider_key_get(user=user, provider=provider)
    if key is None or provider_key_effective_status(key) not in USABLE_STATUSES:
        return None
    return key


@sensitive_variables()
def provider_key_plaintext(provider_key: ProviderKey) -> str:
    """Decrypt the key for the call about to use it. The caller drops it when the call ends.

    A ciphertext that does not open (unknown key id, tampered, copied from another row) raises
    `KEY_NEEDS_REENTRY`; the caller records that with `provider_key_mark_needs_reentry`.
    """
    try:
        return get_keyring().decrypt(provider_key.ciphertext, purpose=provider_key.purpose)
    except DecryptionError:
        raise NiyraError(KEY_NEEDS_REENTRY, detail={"provider": provider_key.provider}) from None


# --- OAuth connections ------------------------------------------------------------------------


def connection_list(*, user: User) -> QuerySet[OAuthConnection]:
    return OAuthConnection.objects.filter(user=user).order_by("integration")


def connection_get(*, user: User, integration: str) -> OAuthConnection | None:
    return OAuthConnection.objects.filter(user=user, integration=integration).first()


def connections_due(*, at: datetime | None = None) -> QuerySet[OAuthConnection]:
    """Active connections whose token expires before the next poll plus the margin.

    One range scan of `oauth_connection_due_idx` (partial on status='active'), soonest first.
    """
    cutoff = (at or oauth.now()) + oauth.refresh_window()
    return OAuthConnection.objects.filter(status=ConnectionStatus.ACTIVE, expires_at__lt=cutoff).order_by("expires_at")


def connection_ids_due(*, at: datetime | None = None) -> list[int]:
    return list(connections_due(at=at).values_list("pk", flat=True))


def _usable(connection: OAuthConnection | None) -> OAuthConnection:
    if connection is None:
        raise NiyraError(OAUTH_CONNECTION_NOT_FOUND)
    if connection.status == ConnectionStatus.NEEDS_REAUTH:
        raise NiyraError(OAUTH_NEEDS_REAUTH, detail={"integration": connection.integration})
    if connection.status == ConnectionStatus.ERROR:
        raise NiyraError(OAUTH_CONNECTION_ERROR, detail={"integration": connection.integration})
    return connection


@sensitive_variables()
def connection_access_token(*, user: User, integration: str) -> str:
    """A usable access token for the user's `integration` connection, for the call about to use it.

    If it expires within the margin (the daemon is late, or down), it is refreshed first, under
    the same row lock as the daemon's (waiting for a refresh in progress rather than starting a
    second one). A refresh that fails transiently still returns the current token while it
    works; an expired one raises OAUTH_PROVIDER_UNAVAILABLE. A connection that needs a
    reconnect, or gave up, raises its catalogue error. Call it outside any transaction of your
    own (from async code: through `sync_to_async`), or a refresh would keep your transaction's
    locks for the length of the provider round trip.
    """
    from byok.services import connection_mark_needs_reauth, connection_refresh  # services import this module

    connection = _usable(connection_get(user=user, integration=integration))
    margin = oauth.refresh_margin()
    if connection.expires_at is not None and connection.expires_at < oauth.now() + margin:
        connection_refresh(connection_id=connection.pk, wait=True, expiring_within=margin)
        connection = _usable(connection_get(user=user, integration=integration))
        if connection.expires_at is not None and connection.expires_at <= oauth.now():
            raise NiyraError(OAUTH_PROVIDER_UNAVAILABLE, detail={"integration": integration})
    try:
        return get_keyring().decrypt(connection.access_token_ciphertext, purpose=connection.access_token_purpose)
    except DecryptionError:
        connection_mark_needs_reauth(
            connection_id=connection.pk, spec=OAUTH_TOKEN_UNREADABLE, reason="token_unreadable"
        )
        raise NiyraError(OAUTH_TOKEN_UNREADABLE, detail={"integration": integration}) from None
