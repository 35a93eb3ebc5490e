"""Every write to OAuth connections, each status change with its audit row in the same transaction.

Connect (authorization code + state + PKCE), refresh (the daemon's task, the on-demand
`connection_access_token_obtain`, and `connection_call` / `connection_token_rejected` when a
provider refuses a token Niyra thought fresh), disconnect. Token plaintext exists only in these
functions' locals (`sensitive_variables`) and in connections.oauth's. Successful routine refreshes
are not audited (one every few minutes per connection would drown the trail); `last_refreshed_at`
records them.

A connection that stops working (`needs_reauth`, or `error` after repeated failures) or works
again (a reconnect, a refresh that succeeds after `error`) is a transition: its number
(`status_changes`) names its one notification, sent in the same transaction as the change, so a
replayed task or a second worker never tells the user twice.

The refresh task is queued by its name (`REFRESH_TASK`, through Celery's `signature`), so this
module does not import `connections.tasks`, which calls into it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.db import connection as db_connection
from django.db.models import F
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from kombu.exceptions import OperationalError as KombuOperationalError

from accounts.models import User
from accounts.services import audit_event_record
from connections import oauth
from connections.metrics import oauth_refresh_record
from connections.models import (
    ConnectionStatus,
    OAuthAuthorizationRequest,
    OAuthConnection,
    oauth_code_verifier_purpose,
)
from connections.selectors import connection_get
from core.crypto import DecryptionError, get_keyring
from core.dbpool import database_unreachable
from core.errors import (
    CATALOGUE,
    OAUTH_ACCESS_DENIED,
    OAUTH_CODE_MISSING,
    OAUTH_CONNECTION_ERROR,
    OAUTH_CONNECTION_NOT_FOUND,
    OAUTH_NEEDS_REAUTH,
    OAUTH_NO_REFRESH_TOKEN,
    OAUTH_PROVIDER_UNAVAILABLE,
    OAUTH_STATE_INVALID,
    OAUTH_TOKEN_UNREADABLE,
    ErrorSpec,
    NiyraError,
)
from notifications.models import Kind
from notifications.services import notification_send

logger = logging.getLogger(__name__)

# The per-connection refresh task (connections.tasks registers it under this name).
REFRESH_TASK = "connections.tasks.oauth_connection_refresh"
# Where a notification sends the user to reconnect (the dashboard's Connections page).
CONNECTIONS_PAGE = "/settings/connections/"

T = TypeVar("T")


class TokenRejected(Exception):
    """Raised by an integration call (the callable given to `connection_call`) when the provider
    answered 401 to the access token it was given. Carries nothing: never put the token in it."""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What `connection_refresh` did. `retry_in`: seconds until a retry is worth it (transient
    failure while the token is still valid); the task turns it into a Celery retry.
    `margin_seconds` (a refresh): how long before the old token's expiry it happened, negative
    after it had lapsed; None when it did not expire."""

    outcome: str  # refreshed | fresh | gone | locked | inactive | needs_reauth | failed | error
    retry_in: float | None = None
    margin_seconds: float | None = None


class _LockTimeout(Exception):
    pass


def _state_hash(state: str) -> str:
    return hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()


def _audit_connection(
    *,
    actor: User | None,
    user: User,
    event: str,
    integration: str,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> None:
    audit_event_record(
        actor=actor,
        subject=user,
        event=event,
        target=integration,
        outcome=outcome,
        details={"integration": integration, **(details or {})},
    )
    logger.info("%s user=%s integration=%s outcome=%s", event, user.pk, integration, outcome)


def _schedule_refresh(connection_id: int, *, countdown: float = 0.0, force: bool = False) -> None:
    """Queue the refresh task for `connection_id` once the current transaction commits (ids only).

    It expires one interval after it was due: by then a later tick has queued a fresh one.
    """
    kwargs: dict[str, Any] = {"connection_id": connection_id}
    if force:
        kwargs["force"] = True
    expires = countdown + settings.OAUTH_REFRESH_INTERVAL_SECONDS

    def enqueue() -> None:
        try:
            current_app.signature(REFRESH_TASK).apply_async(kwargs=kwargs, countdown=countdown, expires=expires)
        except KombuOperationalError:
            # The broker is down. What was committed stands (a 500 now would only hide that it
            # did); the tick queues every due connection again once the broker is back.
            logger.warning("oauth_connection.refresh_not_queued id=%s: the broker is unavailable", connection_id)

    transaction.on_commit(enqueue)


def _refresh_is_due(connection: OAuthConnection, *, at: datetime, expiring_within: timedelta | None) -> bool:
    if connection.expires_at is None:
        return False  # a token that does not expire (and has no refresh token: see connections.oauth)
    if expiring_within is not None:  # on demand: only when it is about to expire
        return connection.expires_at < at + expiring_within
    window = oauth.refresh_window()
    if connection.expires_at >= at + window:
        return False  # already fresh: another task (or a reconnect) got here first
    lifetime = connection.expires_at - connection.token_issued_at
    # A short-lived token has a follow-up queued at the end of its life: the tick leaves a
    # young one alone (see oauth.follow_up_seconds).
    return not (lifetime < window and at < connection.token_issued_at + lifetime / 2)


def _bound_transaction() -> None:
    """A refresh transaction that somehow outlives its HTTP timeouts is ended by the server
    (releasing the row lock), and a waiting on-demand caller gives up after 15 s."""
    with db_connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', '60s', true),"
            " set_config('lock_timeout', '15s', true)"
        )


@sensitive_variables()
def _sealed_tokens(
    connection: OAuthConnection, *, tokens: oauth.TokenSet, previous_refresh_token: str | None, requested_at: datetime
) -> dict[str, Any]:
    """The column values for a new token set: both tokens sealed with the primary key (the kept
    refresh token too, so the shared key id column stays true), and the expiry by the rules in
    connections.oauth (expires_at counts from when the request was sent: early rather than late)."""
    keyring = get_keyring()
    refresh_token = tokens.refresh_token or previous_refresh_token
    if tokens.expires_in is not None:
        expires_at: datetime | None = requested_at + timedelta(seconds=tokens.expires_in)
    elif refresh_token:
        integration = oauth.find_integration(connection.integration)
        default = integration.default_expires_in if integration else oauth.DEFAULT_EXPIRES_IN
        expires_at = requested_at + timedelta(seconds=default)
    else:
        expires_at = None
    values: dict[str, Any] = {
        "access_token_ciphertext": keyring.encrypt(tokens.access_token, purpose=connection.access_token_purpose),
        "refresh_token_ciphertext": (
            keyring.encrypt(refresh_token, purpose=connection.refresh_token_purpose) if refresh_token else None
        ),
        "encryption_key_id": keyring.primary_kid,
        "expires_at": expires_at,
        "token_issued_at": requested_at,
        "status": ConnectionStatus.ACTIVE,
        "consecutive_failures": 0,
        "last_error_code": "",
        "last_error_reason": "",
        "last_error_at": None,
    }
    if tokens.scope is not None:
        values["scopes"] = tokens.scope[:1000]
    return values


def _label(integration: str) -> str:
    found = oauth.find_integration(integration)
    return found.label if found else integration


def _notify_stopped(connection: OAuthConnection, *, seq: int, status: ConnectionStatus, spec: ErrorSpec) -> None:
    """Tell the user, once for transition `seq`, that the connection stopped working. Caller holds
    the row lock, inside the transaction that records the change. Catalogue words only."""
    label = _label(connection.integration)
    if status == ConnectionStatus.NEEDS_REAUTH:
        title = f"Reconnect {label}: Niyra can no longer refresh its access"
        why = spec.message
    else:
        title = f"Reconnect {label}: Niyra stopped refreshing its access"
        why = f"{OAUTH_CONNECTION_ERROR.message} The last attempt: {spec.message}"
    notification_send(
        user_id=connection.user_id,
        kind=Kind.CONNECTION_NEEDS_REAUTH,
        event_key=f"connection:{connection.pk}:stopped:{seq}",
        title=title,
        body=f"{why}\n\nUntil you reconnect it, Niyra's tools can't use {label} for you. "
        "Reconnect it on Settings → Connections.",
        link=CONNECTIONS_PAGE,
    )


def _notify_recovered(connection: OAuthConnection, *, seq: int, how: str) -> None:
    """Tell the user, once for transition `seq`, that the connection works again."""
    label = _label(connection.integration)
    notification_send(
        user_id=connection.user_id,
        kind=Kind.CONNECTION_RECOVERED,
        event_key=f"connection:{connection.pk}:recovered:{seq}",
        title=f"{label} works again",
        body=f"{how} Niyra's tools can use {label} again, and Niyra keeps its access refreshed.",
        link=CONNECTIONS_PAGE,
    )


def _mark_needs_reauth(connection: OAuthConnection, *, spec: ErrorSpec, reason: str, at: datetime) -> None:
    """Terminal: the daemon stops; the user sees Reconnect and is told once. Caller holds the row
    lock and has checked the connection is not already `needs_reauth`."""
    seq = connection.status_changes + 1
    OAuthConnection.objects.filter(pk=connection.pk).update(
        status=ConnectionStatus.NEEDS_REAUTH,
        last_error_code=spec.code,
        last_error_reason=reason,
        last_error_at=at,
        status_changes=seq,
        status_changed_at=at,
        updated_at=timezone.now(),
    )
    _audit_connection(
        actor=None,
        user=connection.user,
        event="oauth_connection.needs_reauth",
        integration=connection.integration,
        outcome=spec.code,
        details={"reason": reason},
    )
    _notify_stopped(connection, seq=seq, status=ConnectionStatus.NEEDS_REAUTH, spec=spec)


def _record_failure(connection: OAuthConnection, exc: oauth.TokenEndpointError, *, at: datetime) -> RefreshResult:
    """Caller holds the row lock. invalid_grant is terminal; anything else counts a failure and,
    past the limit, gives up into "error"."""
    if exc.kind == "invalid_grant":
        _mark_needs_reauth(connection, spec=OAUTH_NEEDS_REAUTH, reason=exc.reason, at=at)
        return RefreshResult("needs_reauth")
    failures = connection.consecutive_failures + 1
    gives_up = failures >= oauth.MAX_CONSECUTIVE_FAILURES
    stops = gives_up and connection.status != ConnectionStatus.ERROR
    seq = connection.status_changes + 1 if stops else connection.status_changes
    OAuthConnection.objects.filter(pk=connection.pk).update(
        consecutive_failures=F("consecutive_failures") + 1,
        last_error_code=exc.spec.code,
        last_error_reason=exc.reason,
        last_error_at=at,
        status=ConnectionStatus.ERROR if gives_up else connection.status,
        status_changes=seq,
        status_changed_at=at if stops else connection.status_changed_at,
        updated_at=timezone.now(),
    )
    logger.warning(
        "oauth_connection.refresh_failed id=%s integration=%s kind=%s reason=%s failures=%s",
        connection.pk,
        connection.integration,
        exc.kind,
        exc.reason,
        failures,
    )
    if gives_up:
        if stops:
            _audit_connection(
                actor=None,
                user=connection.user,
                event="oauth_connection.error",
                integration=connection.integration,
                outcome=exc.spec.code,
                details={"reason": exc.reason, "consecutive_failures": failures},
            )
            _notify_stopped(connection, seq=seq, status=ConnectionStatus.ERROR, spec=exc.spec)
        return RefreshResult("error")
    retry_in: float | None = None
    if exc.kind in ("transient", "malformed"):
        delay = oauth.retry_delay_seconds(failures, retry_after=exc.retry_after)
        # Retry only while the token still works; once it has lapsed the next tick tries again.
        if connection.expires_at is None or at + timedelta(seconds=delay) < connection.expires_at:
            retry_in = delay
    return RefreshResult("failed", retry_in=retry_in)


@sensitive_variables()
def _holds_access_token(connection: OAuthConnection, token: str) -> bool:
    """Whether `token` is the connection's stored access token (compared in constant time)."""
    try:
        current = get_keyring().decrypt(connection.access_token_ciphertext, purpose=connection.access_token_purpose)
    except DecryptionError:
        return True  # a token that does not open is no better than the rejected one: refresh it
    return hmac.compare_digest(current.encode(), token.encode())


@sensitive_variables()
def connection_refresh(
    *,
    connection_id: int,
    force: bool = False,
    wait: bool = False,
    expiring_within: timedelta | None = None,
    rejected_token: str | None = None,
) -> RefreshResult:
    """Refresh one connection's tokens if it is due: exactly once per refresh token.

    The row lock is held *across* the token-endpoint call, on purpose. Everywhere else Niyra never
    keeps a transaction open over a network call; here the lock is what makes "exactly one
    refresh per token" true: with rotating refresh tokens, a second worker presenting the same
    (now rotated) token makes the provider revoke the whole grant. Two workers, two beats, a
    redelivered task or an on-demand caller all serialise on the lock and re-read; whoever comes
    second finds the token fresh. The cost is bounded: the HTTP call has short explicit timeouts
    (connections.oauth, 10 s per phase by default), and PostgreSQL ends a transaction idle for 60 s.

    `wait=False` (the daemon): a row locked by someone else is skipped (they are refreshing it).
    `wait=True` (on demand): wait for the lock, then re-check. `force` (admin "refresh now"):
    refresh even if fresh, and retry a connection in "error". A connection deleted meanwhile is
    a no-op; `needs_reauth` is never retried (the grant is gone: only a reconnect helps).
    `rejected_token` (on demand, after a 401; see `connection_token_rejected`): refresh whatever
    `expires_at` says if the stored access token is still that one; if it is not, someone
    refreshed meanwhile: "fresh", without a token-endpoint call.
    """
    integration: str | None = None  # for the metrics: unknown when the row is gone
    try:
        with transaction.atomic():
            _bound_transaction()
            try:
                connection = (
                    OAuthConnection.objects.select_for_update(skip_locked=not wait).filter(pk=connection_id).first()
                )
            except OperationalError as exc:
                if database_unreachable(exc):  # not a lock wait: the database went away
                    raise
                raise _LockTimeout from None
            if connection is None:
                if not wait:  # skipped: a row someone else holds is still there
                    integration = (
                        OAuthConnection.objects.filter(pk=connection_id).values_list("integration", flat=True).first()
                    )
                result = RefreshResult("locked" if integration is not None else "gone")
            else:
                integration = connection.integration
                result = _refresh_locked(
                    connection, force=force, expiring_within=expiring_within, rejected_token=rejected_token
                )
    except _LockTimeout:
        result = RefreshResult("locked")
    oauth_refresh_record(
        integration=integration or "",
        outcome=result.outcome,
        retrying=result.retry_in is not None,
        margin_seconds=result.margin_seconds,
    )
    return result


@sensitive_variables()
def _refresh_locked(
    connection: OAuthConnection,
    *,
    force: bool,
    expiring_within: timedelta | None,
    rejected_token: str | None,
) -> RefreshResult:
    """`connection_refresh`'s rules, for a connection whose row lock the caller holds."""
    at = oauth.now()
    if connection.status == ConnectionStatus.NEEDS_REAUTH or (
        connection.status == ConnectionStatus.ERROR and not force
    ):
        return RefreshResult("inactive")
    if rejected_token is not None:
        if not _holds_access_token(connection, rejected_token):
            return RefreshResult("fresh")  # the daemon or another caller got here first
    elif not force and not _refresh_is_due(connection, at=at, expiring_within=expiring_within):
        return RefreshResult("fresh")
    if not connection.refresh_token_ciphertext:
        if connection.expires_at is None and rejected_token is None:
            return RefreshResult("fresh")  # non-expiring token: nothing to renew
        if rejected_token is not None:
            # The provider refused a token nothing can renew: only a reconnect helps.
            _mark_needs_reauth(connection, spec=OAUTH_NEEDS_REAUTH, reason="token_rejected", at=at)
            return RefreshResult("needs_reauth")
        # An expiring token without a refresh token cannot be kept alive: ask for a
        # reconnect now, before it lapses, rather than let tool calls fail later.
        _mark_needs_reauth(connection, spec=OAUTH_NO_REFRESH_TOKEN, reason="no_refresh_token", at=at)
        return RefreshResult("needs_reauth")
    integration = oauth.find_integration(connection.integration)
    if integration is None:
        return _record_failure(connection, oauth.TokenEndpointError("rejected", "integration_not_configured"), at=at)
    try:
        refresh_token = get_keyring().decrypt(
            connection.refresh_token_ciphertext, purpose=connection.refresh_token_purpose
        )
    except DecryptionError:
        _mark_needs_reauth(connection, spec=OAUTH_TOKEN_UNREADABLE, reason="token_unreadable", at=at)
        return RefreshResult("needs_reauth")

    try:
        tokens = oauth.refresh_grant(integration, refresh_token=refresh_token)  # lock held: see above
    except oauth.TokenEndpointError as exc:
        if rejected_token is not None and (connection.expires_at is None or connection.expires_at > at):
            # The provider refused the stored token: it is dead whatever expires_at says,
            # so the next tick and every caller refresh it rather than hand it out.
            OAuthConnection.objects.filter(pk=connection.pk).update(expires_at=at)
            connection.expires_at = at
        return _record_failure(connection, exc, at=at)

    values = _sealed_tokens(connection, tokens=tokens, previous_refresh_token=refresh_token, requested_at=at)
    del refresh_token, tokens
    values["last_refreshed_at"] = at
    # How early it came (the worst over active connections is the refresh tick's gauge).
    margin_seconds = (connection.expires_at - at).total_seconds() if connection.expires_at is not None else None
    values["last_refresh_margin_seconds"] = math.floor(margin_seconds) if margin_seconds is not None else None
    values["updated_at"] = timezone.now()
    recovers = connection.status == ConnectionStatus.ERROR
    if recovers:
        values["status_changes"] = connection.status_changes + 1
        values["status_changed_at"] = at
    if not OAuthConnection.objects.filter(pk=connection.pk).update(**values):
        return RefreshResult("gone")  # the user was deleted while the token endpoint answered
    if recovers:
        _audit_connection(
            actor=None,
            user=connection.user,
            event="oauth_connection.recovered",
            integration=connection.integration,
        )
        _notify_recovered(connection, seq=values["status_changes"], how="Niyra refreshed its access successfully.")
    follow_up = oauth.follow_up_seconds(issued_at=at, expires_at=values["expires_at"])
    if follow_up is not None:
        _schedule_refresh(connection.pk, countdown=follow_up)
    return RefreshResult("refreshed", margin_seconds=margin_seconds)


def connection_mark_needs_reauth(*, connection_id: int, spec: ErrorSpec, reason: str) -> None:
    """Record that a connection cannot be used until reconnected (e.g. its tokens don't open)."""
    with transaction.atomic():
        connection = OAuthConnection.objects.select_for_update().filter(pk=connection_id).first()
        if connection is not None and connection.status != ConnectionStatus.NEEDS_REAUTH:
            _mark_needs_reauth(connection, spec=spec, reason=reason, at=oauth.now())


def connection_refresh_request(*, connection_id: int, actor: User) -> bool:
    """Support's "refresh now": audited, then the refresh task (forced) once this commits."""
    with transaction.atomic():
        connection = OAuthConnection.objects.filter(pk=connection_id).select_related("user").first()
        if connection is None:
            return False
        _audit_connection(
            actor=actor,
            user=connection.user,
            event="oauth_connection.refresh_requested",
            integration=connection.integration,
            details={"status": connection.status},
        )
        _schedule_refresh(connection.pk, force=True)
    return True


@sensitive_variables()
def connection_connect_start(*, user: User, integration: str, redirect_uri: str) -> str:
    """Start (or restart: reconnect) connecting `integration`; returns the provider URL to open.

    The state and the PKCE verifier stay on the server (a short-lived row: the state as a hash,
    the verifier encrypted), so the callback can check both; nothing about tokens is stored yet.
    """
    spec = oauth.get_integration(integration)
    redirect_uri = spec.redirect_uri or redirect_uri
    start = oauth.authorization_start(spec, redirect_uri=redirect_uri)
    state_hash = _state_hash(start.state)
    keyring = get_keyring()
    purpose = oauth_code_verifier_purpose(user_id=user.pk, integration=spec.name, state_hash=state_hash)
    with transaction.atomic():
        OAuthAuthorizationRequest.objects.create(
            user=user,
            integration=spec.name,
            state_hash=state_hash,
            code_verifier_ciphertext=keyring.encrypt(start.code_verifier, purpose=purpose),
            encryption_key_id=keyring.primary_kid,
            redirect_uri=redirect_uri,
            expires_at=oauth.now() + oauth.AUTHORIZATION_TTL,
        )
        _audit_connection(actor=user, user=user, event="oauth_connection.connect_started", integration=spec.name)
    return start.url


def _connect_failed(*, user: User, integration: str, spec: ErrorSpec, details: dict[str, Any] | None = None) -> None:
    with transaction.atomic():
        _audit_connection(
            actor=user,
            user=user,
            event="oauth_connection.connect_failed",
            integration=integration,
            outcome=spec.code,
            details=details,
        )


@sensitive_variables()
def connection_connect_complete(
    *, user: User, integration: str, state: str | None, code: str | None, error: str | None = None
) -> OAuthConnection:
    """The callback: check the state (known, this user's, this integration's, unused, unexpired),
    consume it, exchange the code with the PKCE verifier, and store the tokens.

    Any failure leaves an existing connection exactly as it was. The state is consumed before
    the exchange, so it can never be used twice, whatever happens next.
    """
    spec = oauth.get_integration(integration)
    at = oauth.now()
    verifier: str | None = None
    redirect_uri = ""
    with transaction.atomic():
        pending = (
            OAuthAuthorizationRequest.objects.select_for_update().filter(state_hash=_state_hash(state)).first()
            if state
            else None
        )
        usable = (
            pending is not None
            and pending.user_id == user.pk
            and pending.integration == spec.name
            and pending.consumed_at is None
            and pending.expires_at > at
        )
        if pending is not None and usable:
            pending.consumed_at = at
            pending.save(update_fields=["consumed_at"])
            redirect_uri = pending.redirect_uri
            try:
                verifier = get_keyring().decrypt(
                    pending.code_verifier_ciphertext, purpose=pending.code_verifier_purpose
                )
            except DecryptionError:
                verifier = None
    if verifier is None:
        _connect_failed(user=user, integration=spec.name, spec=OAUTH_STATE_INVALID)
        raise NiyraError(OAUTH_STATE_INVALID)
    if error:
        provider_error = oauth.safe_error_code(error)
        _connect_failed(user=user, integration=spec.name, spec=OAUTH_ACCESS_DENIED, details={"reason": provider_error})
        raise NiyraError(OAUTH_ACCESS_DENIED, detail={"provider_error": provider_error})
    if not code:
        _connect_failed(user=user, integration=spec.name, spec=OAUTH_CODE_MISSING)
        raise NiyraError(OAUTH_CODE_MISSING)

    requested_at = oauth.now()
    try:
        tokens = oauth.exchange_code(spec, code=code, redirect_uri=redirect_uri, code_verifier=verifier)
    except oauth.TokenEndpointError as exc:
        _connect_failed(user=user, integration=spec.name, spec=exc.spec, details={"reason": exc.reason})
        raise NiyraError(exc.spec, detail={"reason": exc.reason}) from None
    del verifier, code

    with transaction.atomic():
        existing = OAuthConnection.objects.select_for_update().filter(user=user, integration=spec.name).first()
        connection = existing or OAuthConnection(user=user, integration=spec.name, connected_at=requested_at)
        values = _sealed_tokens(connection, tokens=tokens, previous_refresh_token=None, requested_at=requested_at)
        del tokens
        values["connected_at"] = requested_at
        values["last_refreshed_at"] = None
        values["last_refresh_margin_seconds"] = None
        recovers = existing is not None and existing.status != ConnectionStatus.ACTIVE
        if existing is not None and recovers:
            values["status_changes"] = existing.status_changes + 1
            values["status_changed_at"] = requested_at
        if "scopes" not in values:
            values["scopes"] = " ".join(spec.scopes)
        for name, value in values.items():
            setattr(connection, name, value)
        if existing is None:
            try:
                with transaction.atomic():
                    connection.save(force_insert=True)
            except IntegrityError:  # a concurrent callback created it a moment ago: replace its tokens
                connection = OAuthConnection.objects.select_for_update().get(user=user, integration=spec.name)
                existing = connection
                for name, value in values.items():
                    setattr(connection, name, value)
                connection.save()
        else:
            connection.save()
        _audit_connection(
            actor=user,
            user=user,
            event="oauth_connection.reconnected" if existing is not None else "oauth_connection.connected",
            integration=spec.name,
            details={
                "expires_at": connection.expires_at.isoformat() if connection.expires_at else None,
                "refresh_token": connection.refresh_token_ciphertext is not None,
                "scopes": connection.scopes,
            },
        )
        if recovers:
            _notify_recovered(connection, seq=connection.status_changes, how="You reconnected it.")
        follow_up = oauth.follow_up_seconds(issued_at=requested_at, expires_at=connection.expires_at)
        if follow_up is not None:
            _schedule_refresh(connection.pk, countdown=follow_up)
    return connection


@sensitive_variables()
def connection_disconnect(*, user: User, integration: str, actor: User | None = None) -> None:
    """Delete the connection's tokens, then revoke the grant at the provider when it supports it.

    The delete commits first, under the row lock, so the tokens revoked are the final ones (the
    daemon cannot rotate them afterwards) and no transaction stays open over the revocation call.
    """
    actor = actor or user
    with transaction.atomic():
        connection = OAuthConnection.objects.select_for_update().filter(user=user, integration=integration).first()
        if connection is None:
            raise NiyraError(OAUTH_CONNECTION_NOT_FOUND)
        sealed = (
            (connection.refresh_token_ciphertext, connection.refresh_token_purpose, "refresh_token")
            if connection.refresh_token_ciphertext
            else (connection.access_token_ciphertext, connection.access_token_purpose, "access_token")
        )
        spec = oauth.find_integration(integration)
        revocable = spec is not None and spec.supports_revocation
        connection.delete()
        _audit_connection(
            actor=actor,
            user=user,
            event="oauth_connection.disconnected",
            integration=integration,
            details={"revocation": "requested" if revocable else "not_supported"},
        )
    if spec is None or not revocable:
        return
    try:
        token = get_keyring().decrypt(sealed[0], purpose=sealed[1])
    except DecryptionError:
        revoked = False
    else:
        revoked = oauth.revoke(spec, token=token, token_type_hint=sealed[2])
        del token
    with transaction.atomic():
        _audit_connection(
            actor=actor,
            user=user,
            event="oauth_connection.revoked_at_provider",
            integration=integration,
            outcome="ok" if revoked else "failed",
        )


def oauth_authorization_requests_purge(*, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete connect flows expired more than `older_than` ago (used or not): nothing needs them."""
    deleted, _ = OAuthAuthorizationRequest.objects.filter(expires_at__lt=oauth.now() - older_than).delete()
    return deleted


def _usable(connection: OAuthConnection | None) -> OAuthConnection:
    if connection is None:
        raise NiyraError(OAUTH_CONNECTION_NOT_FOUND)
    if connection.status == ConnectionStatus.NEEDS_REAUTH:
        raise NiyraError(OAUTH_NEEDS_REAUTH, detail={"integration": connection.integration})
    if connection.status == ConnectionStatus.ERROR:
        raise NiyraError(OAUTH_CONNECTION_ERROR, detail={"integration": connection.integration})
    return connection


@sensitive_variables()
def _access_token(connection: OAuthConnection) -> str:
    """The stored access token; one that no longer opens marks the connection `needs_reauth`."""
    try:
        return get_keyring().decrypt(connection.access_token_ciphertext, purpose=connection.access_token_purpose)
    except DecryptionError:
        connection_mark_needs_reauth(
            connection_id=connection.pk, spec=OAUTH_TOKEN_UNREADABLE, reason="token_unreadable"
        )
        raise NiyraError(OAUTH_TOKEN_UNREADABLE, detail={"integration": connection.integration}) from None


@sensitive_variables()
def connection_access_token_obtain(*, user: User, integration: str) -> str:
    """A usable access token for the user's `integration` connection, for the call about to use it.

    If it expires within the margin (the daemon is late, or down), it is refreshed first, under
    the same row lock as the daemon's (waiting for a refresh in progress rather than starting a
    second one). A refresh that fails transiently still returns the current token while it
    works; an expired one raises OAUTH_PROVIDER_UNAVAILABLE. A connection that needs a
    reconnect, or gave up, raises its catalogue error; one whose token no longer opens is marked
    `needs_reauth`. Call it outside any transaction of your own (from async code: through
    `sync_to_async`), or a refresh would keep your transaction's locks for the length of the
    provider round trip. A call that may meet a 401 goes through `connection_call` instead.
    """
    connection = _usable(connection_get(user=user, integration=integration))
    margin = oauth.refresh_margin()
    if connection.expires_at is not None and connection.expires_at < oauth.now() + margin:
        connection_refresh(connection_id=connection.pk, wait=True, expiring_within=margin)
        connection = _usable(connection_get(user=user, integration=integration))
        if connection.expires_at is not None and connection.expires_at <= oauth.now():
            raise NiyraError(OAUTH_PROVIDER_UNAVAILABLE, detail={"integration": integration})
    return _access_token(connection)


@sensitive_variables()
def connection_token_rejected(*, user: User, integration: str, rejected_token: str) -> str:
    """The provider answered 401 to `rejected_token`, an access token Niyra handed out as fresh:
    return a usable one, refreshing at most once however many callers and workers notice.

    Single-flight with the daemon: it waits for the connection's row lock (bounded: 15 s, then
    OAUTH_PROVIDER_UNAVAILABLE) and re-reads; if the stored token is no longer the rejected one,
    the daemon or another caller refreshed meanwhile and the current token is returned without a
    token-endpoint call. Otherwise it is refreshed by `connection_refresh`'s one rule, whatever
    `expires_at` says. `invalid_grant` makes the connection `needs_reauth` (and raises
    OAUTH_NEEDS_REAUTH); a transient failure raises its catalogue error, and the rejected token
    counts as expired from then on. Same transaction rule as `connection_access_token_obtain`.
    """
    connection = _usable(connection_get(user=user, integration=integration))
    logger.info("oauth_connection.token_rejected id=%s integration=%s", connection.pk, integration)
    result = connection_refresh(connection_id=connection.pk, wait=True, rejected_token=rejected_token)
    connection = _usable(connection_get(user=user, integration=integration))
    if result.outcome not in ("refreshed", "fresh"):  # locked (the wait timed out) or failed
        spec = CATALOGUE.get(connection.last_error_code) if result.outcome == "failed" else None
        raise NiyraError(spec or OAUTH_PROVIDER_UNAVAILABLE, detail={"integration": integration})
    return _access_token(connection)


@sensitive_variables()
def connection_call(*, user: User, integration: str, call: Callable[[str], T]) -> T:
    """Run `call(access_token)` against the user's `integration`; if it raises `TokenRejected`
    (the provider answered 401), refresh once on demand and run it once more.

    `call` makes the integration request with the bearer token it is given and raises
    `TokenRejected` on a 401 (anything else it raises passes through untouched). A second 401,
    with a token just refreshed, is the caller's: it propagates, and nothing is refreshed again.
    The token never leaves `call`'s arguments; don't log it or hand it to a task. Call it outside
    any transaction of your own (see `connection_access_token_obtain`).
    """
    token = connection_access_token_obtain(user=user, integration=integration)
    try:
        return call(token)
    except TokenRejected:
        pass  # handled below, outside the except block (no exception context to carry along)
    token = connection_token_rejected(user=user, integration=integration, rejected_token=token)
    try:
        return call(token)
    except TokenRejected:
        logger.warning("oauth_connection.token_rejected_after_refresh user=%s integration=%s", user.pk, integration)
        raise
