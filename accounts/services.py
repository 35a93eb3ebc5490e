"""Every write to users, API tokens and the audit trail goes through here."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, TokenKind, User
from core import errors

TOKEN_PREFIX_LENGTH = 8
# Record a token's use at most this often, so authenticating is a read, not a write, on most calls.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def audit_event_record(
    *,
    actor: User | None,
    subject: User | None,
    event: str,
    target: str = "",
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an audit row. Callers run it inside their own transaction, so the row and the
    change it describes commit (or roll back) together."""
    return AuditEvent.objects.create(
        actor=actor, subject=subject, event=event, target=target, outcome=outcome, details=details or {}
    )


@transaction.atomic
def user_create(*, email: str, password: str | None, is_staff: bool = False) -> User:
    email = User.objects.normalize_email(email).strip().lower()
    if User.objects.filter(email__iexact=email).exists():
        raise errors.NiyraError(errors.INVALID_INPUT, detail={"email": ["A user with this email exists."]})
    user = User.objects.create_user(email=email, password=password, is_staff=is_staff)
    audit_event_record(actor=None, subject=user, event="user.created", target=email)
    return user


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: ApiToken
    plaintext: str  # shown to the user once, never stored


@transaction.atomic
def api_token_create(*, user: User, name: str, kind: str = TokenKind.USER, actor: User | None = None) -> IssuedToken:
    name = name.strip()
    if not name or len(name) > 100:
        raise errors.NiyraError(errors.INVALID_INPUT, detail={"name": ["Give the token a name (1 to 100 characters)."]})
    if kind not in TokenKind.values:
        raise errors.NiyraError(errors.INVALID_INPUT, detail={"kind": [f"One of: {', '.join(TokenKind.values)}."]})
    if kind == TokenKind.SERVICE and not user.is_staff:
        raise errors.NiyraError(errors.PERMISSION_DENIED, message="Service tokens belong to staff service accounts.")
    prefix = secrets.token_hex(TOKEN_PREFIX_LENGTH // 2)
    plaintext = f"niy_{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(user=user, name=name, kind=kind, prefix=prefix, token_hash=hash_token(plaintext))
    audit_event_record(
        actor=actor or user,
        subject=user,
        event="api_token.created",
        target=f"niy_{prefix}",
        details={"name": name, "kind": kind},
    )
    return IssuedToken(token=token, plaintext=plaintext)


@transaction.atomic
def api_token_revoke(*, user: User, token_id: int, actor: User | None = None) -> ApiToken:
    """Revoke one of `user`'s tokens. Someone else's token id is simply not found."""
    token = ApiToken.objects.select_for_update().filter(user=user, pk=token_id).first()
    if token is None:
        raise errors.NiyraError(errors.NOT_FOUND)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_event_record(actor=actor or user, subject=user, event="api_token.revoked", target=f"niy_{token.prefix}")
    return token


def api_token_prefix(plaintext: str) -> str | None:
    """The lookup prefix of a presented `niy_<prefix>_<secret>` token; None if it is not shaped
    like one. (The gateway's own authentication parses tokens with this too.)"""
    parts = plaintext.split("_")
    if len(parts) < 3 or parts[0] != "niy" or not parts[1]:
        return None
    return parts[1]


def api_token_authenticate(*, plaintext: str) -> ApiToken | None:
    """The active token matching `plaintext` (its user loaded with it), or None; records its use.

    Hashes are compared in constant time. A service, not a selector: it stamps `last_used_at`
    (at most once per `LAST_USED_RESOLUTION`, with a guarded UPDATE of that one column).
    """
    prefix = api_token_prefix(plaintext)
    if prefix is None:
        return None
    token = ApiToken.objects.select_related("user").filter(prefix=prefix, revoked_at__isnull=True).first()
    if token is None or not hmac.compare_digest(token.token_hash, hash_token(plaintext)):
        return None
    if not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
