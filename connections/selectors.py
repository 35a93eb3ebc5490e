"""Reads of OAuth connections. Nothing here writes, refreshes or decrypts: a usable access token
comes from `connections.services.connection_access_token_obtain`, which may have to refresh it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Min, Q, QuerySet

from accounts.models import User
from connections import oauth
from connections.models import ConnectionStatus, OAuthConnection
from core.errors import CATALOGUE, OAUTH_PROVIDER_UNAVAILABLE, OAUTH_TOKEN_RESPONSE_MALFORMED


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


def connection_worst_refresh_margin(*, at: datetime | None = None) -> float | None:
    """The "no token ever lapses" promise as a number, in seconds: the smallest margin of the
    latest refresh over active connections, where an active connection whose token has already
    expired counts with `expires_at - at` (negative). None when there is nothing to measure.

    One aggregate query over the active rows (the refresh tick's gauge).
    """
    at = at or oauth.now()
    expired = Q(expires_at__lt=at)
    found = OAuthConnection.objects.filter(status=ConnectionStatus.ACTIVE).aggregate(
        lapsed_since=Min("expires_at", filter=expired),
        margin=Min("last_refresh_margin_seconds", filter=~expired),
    )
    margins = [float(found["margin"])] if found["margin"] is not None else []
    if found["lapsed_since"] is not None:
        margins.append((found["lapsed_since"] - at).total_seconds())
    return min(margins, default=None)


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%-d %b %Y, %H:%M} UTC"


# The failures after which the refresh task retries on its own (connections.oauth: transient and
# malformed answers); after any other failure the next tick tries again once the token is due.
_RETRIED_CODES = frozenset({OAUTH_PROVIDER_UNAVAILABLE.code, OAUTH_TOKEN_RESPONSE_MALFORMED.code})


@dataclass(frozen=True, slots=True)
class ConnectionHealth:
    """What the Connections page and the admin say about a connection's refreshing, in words.

    `next_refresh_at` is when the daemon will refresh it: the first tick after
    `expires_at - interval - margin`, a short-lived token's follow-up, or the retry after a
    transient failure; None when nothing is scheduled (reconnect needed, gave up, never expires).
    """

    last_refreshed_at: datetime | None
    next_refresh_at: datetime | None
    next_refresh: str
    failures: int
    last_failure: str  # the catalogue's words
    last_failure_reason: str  # the provider's error code or HTTP status
    last_failure_at: datetime | None
    note: str  # how it stopped, or since when it works again


def _next_refresh(connection: OAuthConnection, *, at: datetime) -> tuple[datetime | None, str]:
    if connection.status == ConnectionStatus.NEEDS_REAUTH:
        return None, "None: Niyra can't refresh it any more. Reconnect it to resume."
    if connection.status == ConnectionStatus.ERROR:
        return None, "None: Niyra stopped retrying. Reconnect it to resume."
    if connection.expires_at is None:
        return None, "Not needed: this access doesn't expire."
    if connection.consecutive_failures and connection.last_error_at and connection.last_error_code in _RETRIED_CODES:
        retry = connection.last_error_at + timedelta(seconds=oauth.retry_delay_seconds(connection.consecutive_failures))
        if retry < connection.expires_at:
            if retry <= at:
                return at, "Retrying now."
            return retry, f"Retry at about {_when(retry)}, while the current access still works."
    follow_up = oauth.follow_up_seconds(issued_at=connection.token_issued_at, expires_at=connection.expires_at)
    if follow_up is not None:  # a short-lived token: its own follow-up
        due = connection.token_issued_at + timedelta(seconds=follow_up)
    else:
        due = connection.expires_at - oauth.refresh_window()
    if due <= at:
        minutes = max(1, round(oauth.refresh_interval().total_seconds() / 60))
        return at, f"Due now: at the next check (Niyra checks every {minutes} minutes)."
    return due, f"At about {_when(due)}, before the access expires at {_when(connection.expires_at)}."


def _note(connection: OAuthConnection) -> str:
    changed = connection.status_changed_at
    if connection.status == ConnectionStatus.NEEDS_REAUTH:
        since = f" since {_when(changed)}" if changed else ""
        return f"Stopped working{since}: reconnect it and Niyra takes over refreshing again."
    if connection.status == ConnectionStatus.ERROR:
        since = f" at {_when(changed)}" if changed else ""
        return (
            f"Niyra gave up refreshing{since} after {connection.consecutive_failures} failed attempts in a row. "
            "Reconnect it, or ask support to retry."
        )
    if connection.consecutive_failures:
        return "Refreshing failed recently; Niyra keeps retrying while the current access works."
    if connection.status_changes and changed:
        return f"Working again since {_when(changed)}."
    return ""


def connection_health(connection: OAuthConnection, *, at: datetime | None = None) -> ConnectionHealth:
    next_at, next_text = _next_refresh(connection, at=at or oauth.now())
    spec = CATALOGUE.get(connection.last_error_code)
    return ConnectionHealth(
        last_refreshed_at=connection.last_refreshed_at,
        next_refresh_at=next_at,
        next_refresh=next_text,
        failures=connection.consecutive_failures,
        last_failure=spec.message if spec else "",
        last_failure_reason=connection.last_error_reason,
        last_failure_at=connection.last_error_at,
        note=_note(connection),
    )
