"""What the user is told about a connection: one notification (and email) when it stops working
(`needs_reauth`, or `error` after repeated failures), one when it works again (a reconnect, a
refresh that succeeds), none for a replayed task; and the page's and the admin's last refresh,
next refresh, failures and recovery note.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.test import Client

from accounts.models import User
from connections import oauth
from connections.models import ConnectionStatus, OAuthConnection
from connections.selectors import connection_health
from connections.services import (
    TokenRejected,
    connection_call,
    connection_mark_needs_reauth,
    connection_refresh,
)
from connections.tasks import oauth_connection_refresh
from core.errors import OAUTH_NEEDS_REAUTH, OAUTH_PROVIDER_UNAVAILABLE, OAUTH_TOKEN_UNREADABLE, NiyraError
from notifications.models import Kind, Notification
from sandbox import SandboxServer
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import T0, URLCONF, Clock, connect, set_expiry, tokens_of
from tests.notifications.outbox import emails_deliver

# Shared fixtures (assigned, not imported, so the test functions' parameters don't shadow an import).
clock = helpers.clock
integrations = helpers.integrations

pytestmark = [pytest.mark.django_db, pytest.mark.urls(URLCONF)]

REAUTH_SUBJECT = "Niyra: Reconnect Gmail: Niyra can no longer refresh its access"
STOPPED_SUBJECT = "Niyra: Reconnect Gmail: Niyra stopped refreshing its access"
RECOVERED_SUBJECT = "Niyra: Gmail works again"


def subjects() -> list[str]:
    """Every email sent so far, oldest first (delivering what is pending first)."""
    emails_deliver()
    return [message.subject for message in mail.outbox]


def deliver_each(step: Callable[[], Any]) -> None:
    """Run `step` and deliver its emails, so the outbox is in the order things happened."""
    step()
    emails_deliver()


@pytest.fixture
def gmail(integrations: Callable[..., str], clock: Clock) -> str:
    return integrations("gmail")


def test_needs_reauth_notifies_once_and_a_replayed_task_sends_nothing_more(
    integrations: Callable[..., str], clock: Clock, pro_user: Any, sandbox: SandboxServer
) -> None:
    # Given a connection whose grant the provider revoked
    integrations("gmail", "revoked")
    connection = connect(pro_user)
    set_expiry(connection, clock() + timedelta(seconds=90))

    # When the daemon's task runs, and runs again (a redelivery), and once more later
    assert oauth_connection_refresh(connection_id=connection.pk) == "needs_reauth"
    assert oauth_connection_refresh(connection_id=connection.pk) == "inactive"
    first = emails_deliver()
    clock.advance(600)
    assert oauth_connection_refresh(connection_id=connection.pk, force=True) == "inactive"

    # Then the user got one email saying what to do, with the page to do it on
    assert [m.subject for m in first] == [REAUTH_SUBJECT]
    assert subjects() == [REAUTH_SUBJECT] and len(mail.outbox) == 1
    [email] = mail.outbox
    assert OAUTH_NEEDS_REAUTH.message in email.body and "http://testserver/settings/connections/" in email.body
    [notification] = Notification.objects.filter(user=pro_user)
    assert notification.kind == Kind.CONNECTION_NEEDS_REAUTH and notification.link == "/settings/connections/"
    assert notification.event_key == f"connection:{connection.pk}:stopped:1"
    connection.refresh_from_db()
    assert (connection.status, connection.status_changes, connection.status_changed_at) == (
        ConnectionStatus.NEEDS_REAUTH,
        1,
        T0,
    )


def test_reconnecting_notifies_recovery_once_and_a_healthy_reconnect_says_nothing(
    gmail: str, clock: Clock, pro_user: Any
) -> None:
    connection = connect(pro_user)
    connection_mark_needs_reauth(connection_id=connection.pk, spec=OAUTH_TOKEN_UNREADABLE, reason="token_unreadable")
    connection_mark_needs_reauth(connection_id=connection.pk, spec=OAUTH_TOKEN_UNREADABLE, reason="token_unreadable")
    assert subjects() == [REAUTH_SUBJECT]
    assert OAUTH_TOKEN_UNREADABLE.message in mail.outbox[0].body

    clock.advance(60)
    connect(pro_user)  # Reconnect
    connect(pro_user)  # and again, while it works: not a recovery

    assert subjects() == [REAUTH_SUBJECT, RECOVERED_SUBJECT]
    assert "You reconnected it." in mail.outbox[1].body
    connection.refresh_from_db()
    assert (connection.status, connection.status_changes) == (ConnectionStatus.ACTIVE, 2)
    assert connection.status_changed_at == T0 + timedelta(seconds=60)
    keys = list(Notification.objects.filter(user=pro_user).order_by("pk").values_list("kind", "event_key"))
    assert keys == [
        (Kind.CONNECTION_NEEDS_REAUTH, f"connection:{connection.pk}:stopped:1"),
        (Kind.CONNECTION_RECOVERED, f"connection:{connection.pk}:recovered:2"),
    ]
    assert connection_health(connection).note == "Working again since 1 Jun 2026, 12:01 UTC."


def test_a_second_outage_is_a_new_event_told_again(gmail: str, clock: Clock, pro_user: Any) -> None:
    connection = connect(pro_user)
    for _ in range(2):
        deliver_each(
            lambda: connection_mark_needs_reauth(
                connection_id=connection.pk, spec=OAUTH_NEEDS_REAUTH, reason="invalid_grant"
            )
        )
        deliver_each(lambda: connect(pro_user))
    assert subjects() == [REAUTH_SUBJECT, RECOVERED_SUBJECT] * 2


def test_giving_up_into_error_notifies_once_and_a_successful_refresh_notifies_recovery_once(
    integrations: Callable[..., str], clock: Clock, pro_user: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    integrations("gmail")
    working = settings.OAUTH_INTEGRATIONS  # the same client later (the grant is that client's)
    connection = connect(pro_user)
    integrations("gmail", "down")
    monkeypatch.setattr(oauth, "MAX_CONSECUTIVE_FAILURES", 2)
    set_expiry(connection, clock() + timedelta(seconds=3000))

    outcomes = [connection_refresh(connection_id=connection.pk, force=True).outcome for _ in range(4)]

    assert outcomes == ["failed", "error", "error", "error"]  # forced retries in "error" fail again
    assert subjects() == [STOPPED_SUBJECT]
    assert OAUTH_PROVIDER_UNAVAILABLE.message in mail.outbox[0].body
    connection.refresh_from_db()
    assert (connection.status, connection.status_changes) == (ConnectionStatus.ERROR, 1)
    health = connection_health(connection)
    assert health.next_refresh_at is None and "stopped retrying" in health.next_refresh
    assert "gave up refreshing at 1 Jun 2026, 12:00 UTC after 4 failed attempts" in health.note

    # Support's "refresh now" once the provider is back; then the replayed task
    settings.OAUTH_INTEGRATIONS = working
    assert oauth_connection_refresh(connection_id=connection.pk, force=True) == "refreshed"
    assert oauth_connection_refresh(connection_id=connection.pk) == "fresh"

    assert subjects() == [STOPPED_SUBJECT, RECOVERED_SUBJECT]
    assert "Niyra refreshed its access successfully." in mail.outbox[1].body
    connection.refresh_from_db()
    assert (connection.status, connection.status_changes, connection.consecutive_failures) == ("active", 2, 0)


def test_a_token_rejected_on_demand_whose_grant_is_gone_notifies_once(
    integrations: Callable[..., str], clock: Clock, pro_user: Any
) -> None:
    integrations("gmail", "revoked")
    connect(pro_user)

    def refused(token: str) -> None:
        raise TokenRejected

    for _ in range(2):  # the second call finds the connection needing a reconnect
        with pytest.raises(NiyraError) as caught:
            connection_call(user=pro_user, integration="gmail", call=refused)
        assert caught.value.spec == OAUTH_NEEDS_REAUTH
    assert subjects() == [REAUTH_SUBJECT]


def test_no_token_appears_in_a_notification_or_an_email(
    integrations: Callable[..., str], clock: Clock, pro_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: set[str] = set()
    integrations("gmail")
    connection = connect(pro_user)
    seen.update(t for t in tokens_of(connection) if t)
    # error (the provider down, twice), recovery, needs_reauth (revoked), reconnect
    monkeypatch.setattr(oauth, "MAX_CONSECUTIVE_FAILURES", 2)
    integrations("gmail", "down")
    for _ in range(2):
        connection_refresh(connection_id=connection.pk, force=True)
    integrations("gmail", "revoked")
    connect(pro_user)
    seen.update(t for t in tokens_of(connection) if t)
    connection_refresh(connection_id=connection.pk, force=True)
    integrations("gmail")
    connect(pro_user)
    seen.update(t for t in tokens_of(connection) if t)

    emails = emails_deliver()
    assert sorted(m.subject for m in emails) == sorted(
        [STOPPED_SUBJECT, RECOVERED_SUBJECT, REAUTH_SUBJECT, RECOVERED_SUBJECT]
    )
    assert len(seen) >= 6
    texts = [f"{m.subject}\n{m.body}\n{m.to}" for m in emails]
    texts += [repr(n) for n in Notification.objects.values()]
    for token in seen:
        for needle in (token, token[7:]):  # the random part alone, too (after "sbx_at_" / "sbx_rt_")
            assert not [text for text in texts if needle in text]


# --- what the page and the admin show ---------------------------------------------------------------


def test_next_refresh_follows_the_daemons_window_the_follow_up_and_the_retry(
    gmail: str, clock: Clock, pro_user: Any, settings: Any
) -> None:
    connection = connect(pro_user)
    window = oauth.refresh_window()  # 300 s interval + 120 s margin

    set_expiry(connection, clock() + timedelta(hours=1))
    health = connection_health(connection)
    assert health.next_refresh_at == clock() + timedelta(hours=1) - window
    assert health.next_refresh == "At about 1 Jun 2026, 12:53 UTC, before the access expires at 1 Jun 2026, 13:00 UTC."

    # A short-lived token (4 minutes) has its own follow-up, at expiry minus the margin
    set_expiry(connection, clock() + timedelta(minutes=4), lifetime=240)
    assert connection_health(connection).next_refresh_at == clock() + timedelta(seconds=120)

    # Inside the window: the next check
    set_expiry(connection, clock() + timedelta(seconds=200))
    health = connection_health(connection)
    assert (health.next_refresh_at, health.next_refresh) == (
        clock(),
        "Due now: at the next check (Niyra checks every 5 minutes).",
    )

    # After a transient failure: the backoff's retry, while the token works
    set_expiry(connection, clock() + timedelta(seconds=200))
    OAuthConnection.objects.filter(pk=connection.pk).update(
        consecutive_failures=2,
        last_error_code=OAUTH_PROVIDER_UNAVAILABLE.code,
        last_error_reason="http_503",
        last_error_at=clock(),
    )
    connection.refresh_from_db()
    health = connection_health(connection)
    assert health.next_refresh_at == clock() + timedelta(seconds=oauth.backoff_seconds(2))
    assert (health.failures, health.last_failure, health.last_failure_reason) == (
        2,
        OAUTH_PROVIDER_UNAVAILABLE.message,
        "http_503",
    )
    assert health.note == "Refreshing failed recently; Niyra keeps retrying while the current access works."


def test_the_connections_page_shows_refreshes_failures_and_what_to_do(
    gmail: str, clock: Clock, pro_user: Any, make_plan_user: Callable[..., Any]
) -> None:
    browser = Client()
    browser.force_login(pro_user)
    connection = connect(pro_user)
    set_expiry(connection, clock() + timedelta(hours=1))
    assert connection_refresh(connection_id=connection.pk, force=True).outcome == "refreshed"

    page = browser.get("/settings/connections/").content.decode()
    assert 'data-testid="last-refresh">1 Jun 2026, 12:00 UTC' in page
    assert "At about 1 Jun 2026, 12:53 UTC, before the access expires at 1 Jun 2026, 13:00 UTC." in page
    assert 'data-testid="failures">0' in page and "Last failure" not in page

    clock.advance(120)
    connection_mark_needs_reauth(connection_id=connection.pk, spec=OAUTH_NEEDS_REAUTH, reason="invalid_grant")
    page = browser.get("/settings/connections/").content.decode()
    assert "Needs reconnect" in page and OAUTH_NEEDS_REAUTH.message in page
    assert "None: Niyra can&#x27;t refresh it any more. Reconnect it to resume." in page
    assert "Stopped working since 1 Jun 2026, 12:02 UTC" in page
    assert "(invalid_grant, 1 Jun 2026, 12:02 UTC)" in page

    admin = Client()
    admin.force_login(User.objects.create_superuser(email="support@niyra.ai", password="x"))
    listing = admin.get("/admin/connections/oauthconnection/").content.decode()
    assert "Next refresh (about)" in listing
    detail = admin.get(f"/admin/connections/oauthconnection/{connection.pk}/change/").content.decode()
    assert "Stopped working since 1 Jun 2026, 12:02 UTC" in detail and OAUTH_NEEDS_REAUTH.message in detail
    access, refresh = tokens_of(connection)
    for token in (access, refresh):
        assert token and token not in page and token not in listing and token not in detail
