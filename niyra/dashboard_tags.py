"""Template filters for the dashboard (`{% load dashboard %}`; registered in settings.TEMPLATES).

Money is integers in millicredits everywhere; pages show credits with three decimals, the same
format as the admin ("1,234.567").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

from credits.pricing import MILLICREDITS_PER_CREDIT

register = template.Library()


@register.filter
def credits(millicredits: int | None) -> str:
    """1234567 -> "1,234.567"; -1500 -> "\u22121.500" (a real minus sign, U+2212)."""
    if millicredits is None:
        return ""
    value = int(millicredits)
    sign = "\u2212" if value < 0 else ""
    whole, fraction = divmod(abs(value), MILLICREDITS_PER_CREDIT)
    return f"{sign}{whole:,}.{fraction:03d}"


@register.filter
def signed_credits(millicredits: int | None) -> str:
    """Ledger amounts: "+12.500" for credits in, "\u22120.123" for charges."""
    if millicredits is None:
        return ""
    value = int(millicredits)
    return ("+" if value > 0 else "") + credits(value)


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
