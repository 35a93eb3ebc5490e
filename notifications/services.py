"""Every write of the notifications app: record a notification (once per event), send its email
(once), mark read, choose which kinds are emailed.

Other apps call `notification_send` from the service that noticed the event, inside its
transaction: the notification commits with the change it reports, and its email is queued after
that commit (ids only). An email is sent at most once per notification: the sending task holds the
row's lock while it sends and records the outcome in the same transaction.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterable

from celery import current_app
from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from accounts.models import User
from notifications.models import EmailOptOut, EmailStatus, Kind, Notification

logger = logging.getLogger(__name__)

EMAIL_TASK = "notifications.tasks.notification_email"
MAX_EMAIL_ATTEMPTS = 5


def _queue_email(notification_id: int) -> None:
    def enqueue() -> None:
        try:
            current_app.signature(EMAIL_TASK).apply_async(kwargs={"notification_id": notification_id})
        except KombuOperationalError:
            # The row stays pending: the sweep (notifications.tasks) queues it again.
            logger.warning("notification.email_not_queued id=%s: the broker is unavailable", notification_id)

    transaction.on_commit(enqueue)


def notification_send(
    *, user_id: int, kind: Kind, event_key: str, title: str, body: str, link: str = ""
) -> Notification | None:
    """Record one notification for the event ``event_key`` and queue its email after commit.

    Idempotent on (user, event_key): an event already recorded returns None and sends nothing.
    ``title`` and ``body`` are plain text the user reads in the list and the email; they must
    never hold a key, a token or any other secret (the canary tests read the outbox).
    """
    try:
        with transaction.atomic():  # a savepoint when the caller's transaction is open
            notification = Notification.objects.create(
                user_id=user_id, kind=kind, event_key=event_key, title=title[:200], body=body, link=link
            )
    except IntegrityError:  # the unique (user, event_key): this event was already recorded
        return None
    _queue_email(notification.pk)
    logger.info("notification.recorded id=%s user=%s kind=%s", notification.pk, user_id, kind)
    return notification


def _message(notification: Notification, user: User) -> EmailMessage:
    link = f"\n\n{settings.NIYRA_PUBLIC_URL.rstrip('/')}{notification.link}" if notification.link else ""
    preferences = f"{settings.NIYRA_PUBLIC_URL.rstrip('/')}/settings/notifications/"
    body = (
        f"{notification.body}{link}\n\n"
        f"— Niyra\nYou get this email because of your notification settings: {preferences}\n"
    )
    return EmailMessage(subject=f"Niyra: {notification.title}", body=body, to=[user.email])


def notification_email(*, notification_id: int) -> str:
    """Send one notification's email, once. Returns what happened (for the task's log).

    The row is locked (skip_locked: a duplicate delivery running now leaves it to the first) for
    the whole send and its outcome is written before the lock goes, so a replay finds it sent.
    A transient SMTP or network failure raises for the task to retry, up to MAX_EMAIL_ATTEMPTS.
    """
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("user")
            .filter(pk=notification_id)
            .first()
        )
        if notification is None:
            return "busy_or_gone"
        if notification.email_status != EmailStatus.PENDING:
            return notification.email_status
        user = notification.user
        if not user.is_active or not user.email:
            notification.email_status = EmailStatus.FAILED
            notification.save(update_fields=["email_status"])
            return "no_address"
        if EmailOptOut.objects.filter(user_id=user.pk, kind=notification.kind).exists():
            notification.email_status = EmailStatus.OPTED_OUT
            notification.save(update_fields=["email_status"])
            return EmailStatus.OPTED_OUT
        notification.email_attempts += 1
        try:
            _message(notification, user).send()
        except (smtplib.SMTPException, OSError) as exc:
            failure: Exception | None = exc
            gave_up = notification.email_attempts >= MAX_EMAIL_ATTEMPTS
            if gave_up:
                notification.email_status = EmailStatus.FAILED
            notification.save(update_fields=["email_status", "email_attempts"])  # the attempt counts
        else:
            failure, gave_up = None, False
            notification.email_status = EmailStatus.SENT
            notification.emailed_at = timezone.now()
            notification.save(update_fields=["email_status", "emailed_at", "email_attempts"])
    if failure is not None:
        if gave_up:
            logger.error("notification.email_failed id=%s attempts=%s: gave up", notification.pk, MAX_EMAIL_ATTEMPTS)
            return EmailStatus.FAILED
        raise failure  # transient: the task retries with backoff
    logger.info("notification.emailed id=%s kind=%s", notification.pk, notification.kind)
    return EmailStatus.SENT


def notifications_mark_read(*, user: User, notification_ids: Iterable[int] | None = None) -> int:
    """Mark the user's notifications read (all unread ones when no ids are given)."""
    rows = Notification.objects.filter(user=user, read_at__isnull=True)
    if notification_ids is not None:
        rows = rows.filter(pk__in=list(notification_ids))
    return rows.update(read_at=timezone.now())


def email_preferences_set(*, user: User, emailed_kinds: Iterable[str]) -> set[str]:
    """Email the user about exactly ``emailed_kinds``; opt out of every other kind."""
    wanted = {Kind(kind) for kind in emailed_kinds}
    with transaction.atomic():
        EmailOptOut.objects.filter(user=user, kind__in=wanted).delete()
        EmailOptOut.objects.bulk_create(
            [EmailOptOut(user=user, kind=kind) for kind in Kind if kind not in wanted], ignore_conflicts=True
        )
    logger.info("notification.preferences user=%s emailed=%s", user.pk, sorted(str(kind) for kind in wanted))
    return {str(kind) for kind in wanted}
