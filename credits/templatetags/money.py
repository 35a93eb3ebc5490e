"""`{% load money %}`: ``{{ amount|credits }}``, or ``{{ amount|credits:"signed" }}`` for ledger
movements ("+12.500", "\u22120.123"), ``{{ amount|credits:"compact" }}`` for round amounts ("100",
"12.5"). Empty for None."""

from __future__ import annotations

from django import template

from credits.money import credits_text

register = template.Library()


@register.filter
def credits(millicredits: int | None, style: str = "") -> str:
    if millicredits is None:
        return ""
    return credits_text(millicredits, signed=style == "signed", compact=style == "compact")
