"""Reads of the notifications app (never a write)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from accounts.models import User
from notifications.models import EmailOptOut, EmailStatus, Kind, Notification


def notification_list(*, user: User) -> QuerySet[Notification]:
    return Notification.objects.filter(user=user)


def notification_unread_count(*, user: User) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def email_kinds_enabled(*, user: User) -> set[str]:
    """The kinds this user is emailed about: every kind but those they opted out of."""
    opted_out = set(EmailOptOut.objects.filter(user=user).values_list("kind", flat=True))
    return {str(kind) for kind in Kind if kind not in opted_out}


def notification_ids_email_pending(*, created_before: datetime, limit: int = 500) -> list[int]:
    """Notifications whose email was never sent (a lost queue message, a broker outage)."""
    rows = Notification.objects.filter(email_status=EmailStatus.PENDING, created_at__lt=created_before)
    return list(rows.order_by("created_at").values_list("pk", flat=True)[:limit])
