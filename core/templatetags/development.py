"""Development-only hints on dashboard pages (`{% load development %}`): shown when DEBUG is on,
so a production page never mentions the provider sandbox."""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings

register = template.Library()


@register.inclusion_tag("dashboard/_sandbox_help.html")
def sandbox_help() -> dict[str, Any]:
    """The line pointing to docs/sandbox.md (test keys for every error), in development only."""
    return {"show": settings.DEBUG}
