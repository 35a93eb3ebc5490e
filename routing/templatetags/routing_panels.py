"""Routing's panels on other apps' pages (`{% load routing_panels %}`): each renders from the
signed-in user, so the page that includes it needs no routing context."""

from __future__ import annotations

from typing import Any, cast

from django import template

from accounts.models import User
from routing.views import fallback_panel_context

register = template.Library()


@register.inclusion_tag("routing/_fallback.html", takes_context=True)
def fallback_panel(context: template.Context) -> dict[str, Any]:
    """Settings → BYOK: the fallback to credits, on or off, and its daily cap."""
    user = cast(User, context["request"].user)  # the page is behind dashboard_login_required
    return fallback_panel_context(user) | {"csrf_token": context.get("csrf_token")}
