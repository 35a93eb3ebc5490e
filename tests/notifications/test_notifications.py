"""Notifications: recorded once per event, emailed once, honouring the per-kind opt-out, listed
in the dashboard; a failing mail server is retried, never doubled."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.urls import reverse

from notifications.models import EmailOptOut, EmailStatus, Kind, Notification
from notifications.services import (
    MAX_EMAIL_ATTEMPTS,
    email_preferences_set,
    notification_email,
    notification_send,
    notifications_mark_read,
)
from notifications.tasks import notification_email_sweep
from tests.notifications.outbox import emails_deliver

pytestmark = pytest.mark.django_db
LOCMEM_SEND = "django.core.mail.backends.locmem.EmailBackend.send_messages"  # the mail server, failing


def send(user: Any, event_key: str = "key:1:problem:1", kind: Kind = Kind.KEY_PROBLEM) -> Notification | None:
    return notification_send(
        user_id=user.pk,
        kind=kind,
        event_key=event_key,
        title="Your OpenAI key was rate limited",
        body="Your vendor limit was hit. Wait or upgrade your tier with the provider.",
        link="/settings/byok/",
    )


def test_an_event_is_recorded_and_emailed_once(user: Any, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as queued:
        first = send(user)
        replay = send(user)

    assert first is not None and replay is None
    assert len(queued) == 1  # one email task, for the first only
    outbox = emails_deliver()
    assert len(outbox) == 1
    assert outbox[0].to == [user.email]
    assert outbox[0].subject == "Niyra: Your OpenAI key was rate limited"
    assert "http://testserver/settings/byok/" in outbox[0].body
    assert notification_email(notification_id=first.pk) == EmailStatus.SENT  # a replayed task
    assert len(mail.outbox) == 1
    first.refresh_from_db()
    assert first.email_status == EmailStatus.SENT and first.emailed_at is not None


def test_the_same_event_key_is_per_user(make_user: Callable[..., Any]) -> None:
    ada, bob = make_user(), make_user()

    assert send(ada) is not None
    assert send(bob) is not None
    assert len(emails_deliver()) == 2


def test_an_opted_out_kind_is_listed_but_not_emailed(user: Any) -> None:
    email_preferences_set(user=user, emailed_kinds=[k for k in Kind.values if k != Kind.KEY_PROBLEM])

    notification = send(user)
    notification_send(
        user_id=user.pk, kind=Kind.CREDITS_LOW, event_key="credits:1:alert:1", title="Your credits are low", body="."
    )

    outbox = emails_deliver()
    assert len(outbox) == 1 and outbox[0].subject == "Niyra: Your credits are low"
    assert notification is not None
    notification.refresh_from_db()
    assert notification.email_status == EmailStatus.OPTED_OUT
    assert Notification.objects.filter(user=user).count() == 2


def test_a_transient_mail_failure_is_retried_then_sent_once(user: Any) -> None:
    notification = send(user)
    assert notification is not None

    with (
        mock.patch(LOCMEM_SEND, side_effect=smtplib.SMTPServerDisconnected),
        pytest.raises(smtplib.SMTPServerDisconnected),
    ):
        notification_email(notification_id=notification.pk)
    notification.refresh_from_db()
    assert notification.email_status == EmailStatus.PENDING and notification.email_attempts == 1

    assert notification_email(notification_id=notification.pk) == EmailStatus.SENT
    assert len(mail.outbox) == 1


def test_a_mail_server_that_keeps_failing_is_given_up_on(user: Any) -> None:
    notification = send(user)
    assert notification is not None
    Notification.objects.filter(pk=notification.pk).update(email_attempts=MAX_EMAIL_ATTEMPTS - 1)

    with mock.patch(LOCMEM_SEND, side_effect=OSError):
        assert notification_email(notification_id=notification.pk) == EmailStatus.FAILED

    notification.refresh_from_db()
    assert notification.email_status == EmailStatus.FAILED
    assert notification_email(notification_id=notification.pk) == EmailStatus.FAILED
    assert mail.outbox == []


def test_the_sweep_requeues_only_old_pending_emails(user: Any) -> None:
    old, new = send(user, "a"), send(user, "b")
    assert old is not None and new is not None
    Notification.objects.filter(pk=old.pk).update(created_at=old.created_at - timedelta(minutes=5))

    with mock.patch("notifications.tasks.notification_email.apply_async") as queue:
        assert notification_email_sweep() == 1

    assert queue.call_args.kwargs == {"kwargs": {"notification_id": old.pk}}


@pytest.mark.django_db(transaction=True)
def test_racing_senders_of_one_event_record_one_notification(user: Any) -> None:
    barrier = threading.Barrier(4)
    results: list[Notification | None] = []

    def racer() -> None:
        barrier.wait()
        try:
            results.append(send(user, event_key="credits:7:alert:42", kind=Kind.CREDITS_LOW))
        finally:
            connection.close()

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(result is not None for result in results) == 1
    assert len(emails_deliver()) == 1


def test_the_list_shows_a_users_own_notifications_and_marks_them_read(
    make_user: Callable[..., Any], client: Client
) -> None:
    ada, bob = make_user(), make_user()
    send(ada)
    notification_send(user_id=bob.pk, kind=Kind.CREDITS_LOW, event_key="x", title="Bob's credits", body="low")
    client.force_login(ada)

    page = client.get(reverse("dashboard:notifications")).content.decode()

    assert "Your OpenAI key was rate limited" in page and "Bob&#x27;s credits" not in page
    assert 'data-testid="unread-count">1<' in page
    client.post(reverse("dashboard:notifications-read"))
    page = client.get(reverse("dashboard:notifications")).content.decode()
    assert 'data-testid="unread-count"' not in page
    assert Notification.objects.get(user=bob).read_at is None


def test_mark_read_touches_only_the_given_users_rows(make_user: Callable[..., Any]) -> None:
    ada, bob = make_user(), make_user()
    mine, theirs = send(ada), send(bob)
    assert mine is not None and theirs is not None

    assert notifications_mark_read(user=ada, notification_ids=[mine.pk, theirs.pk]) == 1
    theirs.refresh_from_db()
    assert theirs.read_at is None


def test_the_email_settings_page_saves_opt_outs(user: Any, client: Client) -> None:
    client.force_login(user)
    url = reverse("dashboard:notification-settings")
    assert 'value="key_problem" checked' in client.get(url).content.decode()

    response = client.post(url, {"email": ["key_recovered", "credits_low", "not-a-kind"]})

    assert response.status_code == 302
    assert set(EmailOptOut.objects.filter(user=user).values_list("kind", flat=True)) == set(Kind.values) - {
        "key_recovered",
        "credits_low",
    }
    page = client.get(url).content.decode()
    assert 'value="key_problem" checked' not in page and 'value="credits_low" checked' in page


def test_the_pages_need_a_sign_in(client: Client) -> None:
    for name in ("dashboard:notifications", "dashboard:notification-settings"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_api_lists_my_notifications_only_and_marks_them_read(
    make_user: Callable[..., Any], client_for: Callable[[Any], Any]
) -> None:
    ada, bob = make_user(), make_user()
    mine = send(ada)
    send(bob)
    api = client_for(ada)

    listed = api.get("/api/notifications").json()
    assert [n["id"] for n in listed["results"]] == [mine.pk] if mine else []
    assert listed["results"][0]["read_at"] is None and "body" in listed["results"][0]
    assert api.get("/api/notifications?unread=maybe").status_code == 400
    assert api.post("/api/notifications/read", {"ids": [mine.pk if mine else 0]}, format="json").json() == {"marked": 1}
    assert api.get("/api/notifications?unread=true").json()["results"] == []
    assert Notification.objects.get(user=bob).read_at is None


def test_the_api_sets_which_kinds_are_emailed(user: Any, client_for: Callable[[Any], Any]) -> None:
    api = client_for(user)
    assert api.get("/api/notifications/email").json() == {"emailed_kinds": Kind.values}

    saved = api.put("/api/notifications/email", {"emailed_kinds": ["key_problem"]}, format="json")
    bad = api.put("/api/notifications/email", {"emailed_kinds": ["everything"]}, format="json")

    assert saved.json() == {"emailed_kinds": ["key_problem"]}
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_input"
    assert api.get("/api/notifications/email").json() == {"emailed_kinds": ["key_problem"]}
