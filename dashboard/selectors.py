"""Reads the home page needs that join apps (the dashboard is the floor that may read them all)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db.models import Sum

from accounts.models import User
from credits.models import KeySource
from routing.models import RoutedCall


def month_start(now: datetime) -> datetime:
    """The first instant of ``now``'s calendar month, in UTC (the dashboard's days are UTC days)."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def byok_savings_since(*, user: User, since: datetime) -> int:
    """Millicredits the user's own keys saved since ``since``: what their BYOK calls would have cost
    in credits (one aggregate on the routed-call log's (user, created_at) index)."""
    total = RoutedCall.objects.filter(user_id=user.pk, key_source=KeySource.BYOK, created_at__gte=since).aggregate(
        total=Sum("credits_would_cost")
    )["total"]
    return int(total or 0)
