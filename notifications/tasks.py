"""Notification emails: one task per notification (its id only), and a sweep that re-queues any
email a lost message or a broker outage left pending."""

from __future__ import annotations

import logging
import smtplib
from datetime import timedelta

from celery import Task, shared_task
from django.utils import timezone

from notifications.selectors import notification_ids_email_pending
from notifications.services import EMAIL_TASK, MAX_EMAIL_ATTEMPTS
from notifications.services import notification_email as email_send

logger = logging.getLogger(__name__)

SWEEP_AFTER = timedelta(minutes=2)


@shared_task(bind=True, name=EMAIL_TASK, ignore_result=True, max_retries=MAX_EMAIL_ATTEMPTS)
def notification_email(self: Task, notification_id: int) -> str:
    try:
        return email_send(notification_id=notification_id)
    except (smtplib.SMTPException, OSError) as exc:
        raise self.retry(exc=exc, countdown=min(600, 30 * 2**self.request.retries)) from exc


@shared_task(name="notifications.tasks.notification_email_sweep", ignore_result=True)
def notification_email_sweep() -> int:
    """Every few minutes (niyra/celery.py): queue again the emails still pending after a while.
    A duplicate is harmless: the send locks the row and finds it sent."""
    ids = notification_ids_email_pending(created_before=timezone.now() - SWEEP_AFTER)
    for notification_id in ids:
        notification_email.apply_async(kwargs={"notification_id": notification_id})
    if ids:
        logger.warning("notification_email_sweep requeued=%s", len(ids))
    return len(ids)
