"""Reads of OAuth connections. Nothing here writes, refreshes or decrypts: a usable access token
comes from `connections.services.connection_access_token_obtain`, which may have to refresh it."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from accounts.models import User
from connections import oauth
from connections.models import ConnectionStatus, OAuthConnection


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
