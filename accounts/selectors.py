"""Reads for users and API tokens."""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.services import hash_token

# Record use at most this often, so authenticating is a read, not a write, on the hot path.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_token_authenticate(*, plaintext: str) -> ApiToken | None:
    """The active token matching `plaintext`, or None. Constant-time comparison of hashes."""
    parts = plaintext.split("_")
    if len(parts) < 3 or parts[0] != "niy" or not parts[1]:
        return None
    token = _active_token_with_user(prefix=parts[1])
    if token is None or not hmac.compare_digest(token.token_hash, hash_token(plaintext)):
        return None
    if not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        # A bookkeeping timestamp, not domain state: a guarded UPDATE, no service needed.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def _active_token_with_user(*, prefix: str) -> ApiToken | None:
    """The unrevoked token with this prefix, its user loaded with it (every API request)."""
    return ApiToken.objects.select_related("user").filter(prefix=prefix, revoked_at__isnull=True).first()


def api_token_list(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user)
