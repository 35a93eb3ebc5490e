"""Template filters for the dashboard pages (`{% load dashboard %}`): shares, ages, status tones.
Money has its own filter in credits (`{% load money %}`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter
def percent(share: Decimal | float | None) -> str:
    """0.9234 -> "92%"; anything above zero but under 1% -> "<1%"."""
    if share is None:
        return ""
    value = Decimal(str(share)) * 100
    if 0 < value < 1:
        return "<1%"
    return f"{value.quantize(Decimal('1'))}%"


@register.filter
def ago(moment: datetime | None) -> str:
    """ "just now", "5 minutes ago", "2 days ago"."""
    if moment is None:
        return ""
    if timezone.now() - moment < timedelta(minutes=1):
        return "just now"
    return f"{timesince(moment)} ago"


_TONES = {
    # provider keys
    "valid": "ok",
    "invalid": "bad",
    "needs_reentry": "bad",
    "rate_limited": "warn",
    "quota_exhausted": "warn",
    "unverified": "muted",
    # OAuth connections
    "active": "ok",
    "needs_reauth": "bad",
    "error": "bad",
    # routed calls / anything else
    "ok": "ok",
}


@register.filter
def tone(status: str | None) -> str:
    """The badge colour class for a status ("ok", "warn", "bad" or "muted")."""
    return _TONES.get(status or "", "muted")
