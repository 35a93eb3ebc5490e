"""The unread count beside "Notifications" in the dashboard's menu (one indexed count per page)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from notifications.selectors import notification_unread_count


def notifications_unread(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"notifications_unread": notification_unread_count(user=user)}
