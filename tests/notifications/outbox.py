"""Test helper: deliver every pending notification email now, as the worker would."""

from __future__ import annotations

from django.core import mail

from notifications.models import EmailStatus, Notification
from notifications.services import notification_email


def emails_deliver() -> list[mail.EmailMessage]:
    """Run the email task for every pending notification; return the whole outbox."""
    for notification_id in Notification.objects.filter(email_status=EmailStatus.PENDING).values_list("pk", flat=True):
        notification_email(notification_id=notification_id)
    return list(mail.outbox)
