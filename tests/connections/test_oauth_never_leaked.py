"""Canary: no OAuth access or refresh token leaves the vault.

Every token the sandbox issues in a connection's life (connect, refreshes with rotation, the
failures, admin "refresh now", on-demand use, a 401 refreshed on demand, disconnect with
revocation) is collected, and none may appear in a log record (captured at DEBUG, SQL included,
before the redaction filter), a response (API, callback, admin pages), a Celery message (the
refresh task's arguments), an audit row, a notification or its email, the cache, or the
database other than as ciphertext. Same trap as the provider-key
canary (tests/byok/test_never_leaked.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.views.debug import ExceptionReporter
from rest_framework.test import APIClient

from accounts.models import AuditEvent, User
from connections import services
from connections.models import OAuthConnection
from connections.services import TokenRejected, connection_access_token_obtain, connection_call
from connections.tasks import oauth_connection_refresh, oauth_refresh_tick
from tests.byok import test_never_leaked
from tests.byok.test_never_leaked import LeakTrap, assert_never_leaked
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import (
    URLCONF,
    Clock,
    Queue,
    authorize,
    connect,
    set_expiry,
    tokens_of,
)
from tests.notifications.outbox import emails_deliver

# Shared fixtures (assigned, not imported, so the test functions' parameters don't shadow an import).
trap = test_never_leaked.trap
clock = helpers.clock
integrations = helpers.integrations
queued = helpers.queued

pytestmark = [pytest.mark.django_db, pytest.mark.urls(URLCONF)]


class Tokens:
    """Every token plaintext seen so far (read from the vault after each step)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def collect(self, connection: OAuthConnection) -> None:
        if OAuthConnection.objects.filter(pk=connection.pk).exists():
            self.seen.update(t for t in tokens_of(connection) if t)


def test_no_token_leaks_through_any_path(
    trap: LeakTrap,
    integrations: Callable[..., str],
    clock: Clock,
    queued: Queue,
    pro_user: Any,
    pro_client: APIClient,
    django_capture_on_commit_callbacks: Any,
) -> None:
    integrations("gmail")
    tokens = Tokens()
    browser = Client()
    browser.force_login(pro_user)
    admin = Client()
    admin.force_login(User.objects.create_superuser(email="support@niyra.ai", password="x"))

    # Connect through the API and the browser callback.
    start = trap.keep(pro_client.post("/api/oauth/connections/gmail/connect"))
    query = authorize(start.json()["authorize_url"])
    trap.keep(browser.get("/oauth/callback/gmail", query))
    connection = OAuthConnection.objects.get(user=pro_user)
    tokens.collect(connection)
    trap.keep(pro_client.get("/api/oauth/connections"))

    # The daemon: tick, fan-out, refresh (rotation), twice.
    for _ in range(2):
        set_expiry(connection, clock() + timedelta(seconds=100))
        with django_capture_on_commit_callbacks(execute=True):
            oauth_refresh_tick()
        for pk in queued.ids():
            oauth_connection_refresh(connection_id=pk)
        queued.clear()
        tokens.collect(connection)
    # On demand, within the margin.
    set_expiry(connection, clock() + timedelta(seconds=30))
    connection_access_token_obtain(user=pro_user, integration="gmail")
    tokens.collect(connection)
    # A 401 on a token Niyra thought fresh: refreshed on demand, the call retried.
    given: list[str] = []

    def refused_once(token: str) -> None:
        given.append(token)
        if len(given) == 1:
            raise TokenRejected

    connection_call(user=pro_user, integration="gmail", call=refused_once)
    tokens.collect(connection)
    assert len(set(given)) == 2

    # Failures: a provider that is down, one that answers garbage, a revoked grant.
    for word in ("down", "malformed", "revoked"):
        integrations("gmail", word)
        set_expiry(connection, clock() + timedelta(seconds=100))
        services.connection_refresh(connection_id=connection.pk)
    integrations("gmail")
    tokens.collect(connection)

    # Admin: changelist, change page, "refresh now", the audit trail.
    trap.keep(admin.get("/admin/connections/oauthconnection/"))
    trap.keep(admin.get(f"/admin/connections/oauthconnection/{connection.pk}/change/"))
    with django_capture_on_commit_callbacks(execute=True):
        trap.keep(
            admin.post(
                "/admin/connections/oauthconnection/", {"action": "refresh_now", "_selected_action": [connection.pk]}
            )
        )
    trap.keep(admin.get("/admin/accounts/auditevent/"))
    for pk in AuditEvent.objects.values_list("pk", flat=True):
        trap.keep(admin.get(f"/admin/accounts/auditevent/{pk}/change/"))

    # Reconnect, then disconnect (revocation at the provider).
    connect(pro_user)
    tokens.collect(connection)
    trap.keep(pro_client.delete("/api/oauth/connections/gmail"))

    assert len(tokens.seen) >= 8
    trap.task_messages.extend(repr(call) for call in queued.calls)  # the refresh task's arguments
    assert queued.calls, "admin 'refresh now' queued nothing"
    emails = emails_deliver()  # needs_reauth (revoked), then recovered (the reconnect)
    assert len(emails) == 2
    for token in tokens.seen:
        assert_never_leaked(token, trap)
        assert not [m for m in emails if token in f"{m.subject}\n{m.body}"], "an email carries a token"


def test_an_error_report_from_inside_a_refresh_shows_no_token(
    integrations: Callable[..., str], clock: Clock, pro_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while the old and new tokens are in the refresh's locals (after the provider answered)."""
    integrations("gmail")
    connection = connect(pro_user)
    access, refresh = tokens_of(connection)
    set_expiry(connection, clock() + timedelta(seconds=100))

    real_get_keyring = services.get_keyring
    calls = iter(range(10))

    def keyring_breaks_on_the_second_call() -> Any:
        # The first call opens the refresh token; the second (sealing the new tokens) fails.
        if next(calls) == 1:
            raise RuntimeError("something broke")
        return real_get_keyring()

    monkeypatch.setattr(services, "get_keyring", keyring_breaks_on_the_second_call)
    with pytest.raises(RuntimeError) as caught:
        services.connection_refresh(connection_id=connection.pk)
    # From the service's frame down (the test's own frame holds the tokens, of course).
    reporter = ExceptionReporter(None, caught.type, caught.value, caught.tb.tb_next)
    html, text = reporter.get_traceback_html(), reporter.get_traceback_text()
    assert "connection_refresh" in html and "_sealed_tokens" in html and "********************" in html
    assert refresh is not None
    for token in (access, refresh):
        assert token not in html and token not in text
