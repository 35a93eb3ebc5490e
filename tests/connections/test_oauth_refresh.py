"""The refresh daemon: the tick's window, the per-connection task, failures, the on-demand selector.

Given connections placed on an injected timeline, when the tick and its tasks run, then exactly
the due tokens are refreshed against the sandbox, with the rules of connections.services.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from celery.exceptions import Retry
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext

from accounts.models import AuditEvent
from connections import oauth
from connections.models import ConnectionStatus, OAuthConnection
from connections.selectors import connection_ids_due, connections_due
from connections.services import connection_access_token_obtain, connection_refresh, oauth_authorization_requests_purge
from connections.tasks import oauth_connection_refresh, oauth_refresh_tick
from core.errors import (
    OAUTH_CONNECTION_ERROR,
    OAUTH_NEEDS_REAUTH,
    OAUTH_NO_REFRESH_TOKEN,
    OAUTH_PROVIDER_UNAVAILABLE,
    OAUTH_TOKEN_RESPONSE_MALFORMED,
    OAUTH_TOKEN_UNREADABLE,
    NiyraError,
)
from niyra.celery import app
from sandbox import SandboxServer
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import (
    T0,
    Clock,
    Queue,
    connect,
    refresh_requests,
    set_expiry,
    tokens_of,
)

# Shared fixtures (assigned, not imported, so the test functions' parameters don't shadow an import).
clock = helpers.clock
integrations = helpers.integrations
queued = helpers.queued

pytestmark = pytest.mark.django_db


def at(seconds: float) -> Any:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def gmail(integrations: Callable[..., str], clock: Clock) -> str:
    return integrations("gmail")


@pytest.fixture
def make_connection(make_plan_user: Callable[..., Any], gmail: str) -> Callable[..., OAuthConnection]:
    def make(integration: str = "gmail", user: Any = None) -> OAuthConnection:
        return connect(user or make_plan_user("pro"), integration)

    return make


def tick(queued: Queue, capture: Any) -> list[int]:
    """Run the beat tick (its on-commit fan-out included); the ids it queued."""
    queued.clear()
    with capture(execute=True):
        oauth_refresh_tick()
    return queued.ids()


def run_all(ids: list[int]) -> list[str]:
    """A worker running each queued task (the task function itself, as Celery would)."""
    return [oauth_connection_refresh(connection_id=pk) for pk in ids]


# --- The window -----------------------------------------------------------------------------------


def test_boundary_tokens_expiring_before_the_next_poll_plus_margin_are_refreshed_by_this_poll(
    make_connection: Callable[..., OAuthConnection],
    clock: Clock,
    queued: Queue,
    django_capture_on_commit_callbacks: Any,
    sandbox: SandboxServer,
) -> None:
    # Given a poll at T0 (interval 300 s, margin 120 s: the window ends at T0 + 420 s)
    soon, late, edge, next_poll = (make_connection() for _ in range(4))
    set_expiry(soon, at(61))  # the seed's naive "60 s before expiry" would let this one lapse
    set_expiry(late, at(299))
    set_expiry(edge, at(419))
    set_expiry(next_poll, at(421))  # the next poll (T0 + 300) still finds 121 s left
    sandbox.log.clear()

    # When the poll runs
    ids = tick(queued, django_capture_on_commit_callbacks)
    outcomes = run_all(ids)

    # Then the first three are refreshed by it, soonest first, and the fourth is left alone
    assert ids == [soon.pk, late.pk, edge.pk]
    assert outcomes == ["refreshed"] * 3
    for connection in (soon, late, edge):
        connection.refresh_from_db()
        assert connection.expires_at == T0 + timedelta(seconds=3600)
        assert connection.last_refreshed_at == T0
    assert len(refresh_requests(sandbox)) == 3

    # And the next poll picks up the fourth with more than the margin left
    clock.advance(300)
    assert tick(queued, django_capture_on_commit_callbacks) == [next_poll.pk]
    next_poll.refresh_from_db()
    assert next_poll.expires_at - clock() >= oauth.refresh_margin()


def test_the_window_follows_the_settings(settings: Any, make_connection: Callable[..., OAuthConnection]) -> None:
    connection = make_connection()
    set_expiry(connection, at(700))
    assert connection_ids_due() == []
    settings.OAUTH_REFRESH_INTERVAL_SECONDS = 600  # window 600 + 120
    assert connection_ids_due() == [connection.pk]
    settings.OAUTH_REFRESH_INTERVAL_SECONDS = 300
    settings.OAUTH_REFRESH_MARGIN_SECONDS = 10  # below the 60 s minimum: 60 is used
    assert oauth.refresh_margin() == timedelta(seconds=60)


def test_only_active_connections_are_due(make_connection: Callable[..., OAuthConnection]) -> None:
    active, reauth, error, forever = (make_connection() for _ in range(4))
    for connection in (active, reauth, error):
        set_expiry(connection, at(100))
    OAuthConnection.objects.filter(pk=reauth.pk).update(status=ConnectionStatus.NEEDS_REAUTH)
    OAuthConnection.objects.filter(pk=error.pk).update(status=ConnectionStatus.ERROR)
    OAuthConnection.objects.filter(pk=forever.pk).update(expires_at=None, refresh_token_ciphertext=None)
    assert connection_ids_due() == [active.pk]


def test_the_tick_is_one_query_and_queues_ids_only(
    make_connection: Callable[..., OAuthConnection], queued: Queue, django_capture_on_commit_callbacks: Any
) -> None:
    connections = [make_connection() for _ in range(3)]
    for n, connection in enumerate(connections):
        set_expiry(connection, at(100 + n))

    with CaptureQueriesContext(db_connection) as queries:
        ids = tick(queued, django_capture_on_commit_callbacks)

    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    # The due query; and the worst refresh margin's one aggregate (connections.metrics).
    assert len(selects) == 2 and all("byok_oauthconnection" in sql for sql in selects)
    assert "MIN(" in selects[1]
    assert ids == [c.pk for c in connections]
    for kwargs, options in queued.calls:
        assert kwargs == {"connection_id": kwargs["connection_id"]}  # an id, nothing else
        assert 0 < options["expires"] <= 300


def test_the_tick_query_uses_the_partial_index(make_connection: Callable[..., OAuthConnection]) -> None:
    make_connection()
    with db_connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # a 1-row table would be scanned otherwise
        try:
            plan = connections_due().values_list("pk", flat=True).explain()
        finally:
            cursor.execute("SET enable_seqscan = on")
    assert "oauth_connection_due_idx" in plan


def test_the_beat_entry(settings: Any) -> None:
    entry = app.conf.beat_schedule["oauth-refresh-tick"]
    assert entry["task"] == "connections.tasks.oauth_refresh_tick"
    assert entry["schedule"] == settings.OAUTH_REFRESH_INTERVAL_SECONDS
    assert 0 < entry["options"]["expires"] < settings.OAUTH_REFRESH_INTERVAL_SECONDS


def test_old_connect_flows_are_purged(make_connection: Callable[..., OAuthConnection], clock: Clock) -> None:
    from connections.models import OAuthAuthorizationRequest

    make_connection()
    assert OAuthAuthorizationRequest.objects.count() == 1
    assert oauth_authorization_requests_purge() == 0
    clock.advance(2 * 24 * 3600)
    assert oauth_authorization_requests_purge() == 1


# --- The task -------------------------------------------------------------------------------------


def test_a_refresh_rotates_and_a_duplicate_task_does_nothing(
    make_connection: Callable[..., OAuthConnection], sandbox: SandboxServer
) -> None:
    connection = make_connection()
    old_access, old_refresh = tokens_of(connection)
    set_expiry(connection, at(100))

    assert oauth_connection_refresh(connection_id=connection.pk) == "refreshed"
    assert oauth_connection_refresh(connection_id=connection.pk) == "fresh"  # two beats, a redelivery

    new_access, new_refresh = tokens_of(connection)
    assert new_access != old_access and new_refresh not in (None, old_refresh)
    assert sandbox.log.count_refresh(old_refresh) == 1
    assert new_refresh is not None and sandbox.log.count_refresh(new_refresh) == 0


def test_no_rotation_keeps_the_refresh_token(
    integrations: Callable[..., str], make_connection: Callable[..., OAuthConnection], sandbox: SandboxServer
) -> None:
    integrations("gmail", "norotate")
    connection = make_connection()
    _, refresh = tokens_of(connection)
    for _ in range(2):
        set_expiry(connection, at(100))
        assert oauth_connection_refresh(connection_id=connection.pk) == "refreshed"
        assert tokens_of(connection)[1] == refresh
    assert refresh is not None and sandbox.log.count_refresh(refresh) == 2


def test_no_expires_in_means_the_integrations_default_lifetime(
    integrations: Callable[..., str], make_connection: Callable[..., OAuthConnection]
) -> None:
    integrations("gmail", "noexpiry", default_expires_in=1800)
    connection = make_connection()
    assert connection.expires_at == T0 + timedelta(seconds=1800)
    set_expiry(connection, at(100))
    assert oauth_connection_refresh(connection_id=connection.pk) == "refreshed"
    connection.refresh_from_db()
    assert connection.expires_at == T0 + timedelta(seconds=1800)


def test_no_refresh_token_and_no_expiry_is_never_due(make_connection: Callable[..., OAuthConnection]) -> None:
    connection = make_connection()
    OAuthConnection.objects.filter(pk=connection.pk).update(expires_at=None, refresh_token_ciphertext=None)
    assert connection_ids_due() == []
    assert connection_refresh(connection_id=connection.pk, force=False).outcome == "fresh"
    assert connection_access_token_obtain(user=connection.user, integration="gmail").startswith("sbx_at_")


def test_an_expiring_token_without_a_refresh_token_asks_for_a_reconnect(
    make_connection: Callable[..., OAuthConnection], sandbox: SandboxServer
) -> None:
    connection = make_connection()
    set_expiry(connection, at(200))
    OAuthConnection.objects.filter(pk=connection.pk).update(refresh_token_ciphertext=None)
    sandbox.log.clear()

    assert oauth_connection_refresh(connection_id=connection.pk) == "needs_reauth"

    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.NEEDS_REAUTH
    assert connection.last_error_code == OAUTH_NO_REFRESH_TOKEN.code
    assert sandbox.log.records() == []
    assert AuditEvent.objects.get(event="oauth_connection.needs_reauth").outcome == OAUTH_NO_REFRESH_TOKEN.code


def test_a_revoked_grant_needs_reauth_within_one_tick_audited_and_no_more_attempts(
    integrations: Callable[..., str],
    make_connection: Callable[..., OAuthConnection],
    queued: Queue,
    django_capture_on_commit_callbacks: Any,
    sandbox: SandboxServer,
    clock: Clock,
) -> None:
    integrations("gmail", "revoked")
    connection = make_connection()
    set_expiry(connection, at(200))
    before = tokens_of(connection)

    assert run_all(tick(queued, django_capture_on_commit_callbacks)) == ["needs_reauth"]

    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.NEEDS_REAUTH
    assert (connection.last_error_code, connection.last_error_reason) == (OAUTH_NEEDS_REAUTH.code, "invalid_grant")
    assert tokens_of(connection) == before
    event = AuditEvent.objects.get(event="oauth_connection.needs_reauth")
    assert (event.subject, event.target, event.actor) == (connection.user, "gmail", None)
    # No more attempts: not due any more, and a stray task does nothing.
    clock.advance(300)
    assert tick(queued, django_capture_on_commit_callbacks) == []
    assert oauth_connection_refresh(connection_id=connection.pk) == "inactive"
    assert len(refresh_requests(sandbox)) == 1
    with pytest.raises(NiyraError) as caught:
        connection_access_token_obtain(user=connection.user, integration="gmail")
    assert caught.value.spec == OAUTH_NEEDS_REAUTH


def test_reuse_of_a_rotated_refresh_token_is_a_revoked_grant(
    make_connection: Callable[..., OAuthConnection], sandbox: SandboxServer
) -> None:
    """Why the row lock matters: a refresh token presented twice revokes the grant."""
    connection = make_connection()
    stale = bytes(connection.refresh_token_ciphertext)
    set_expiry(connection, at(100))
    assert oauth_connection_refresh(connection_id=connection.pk) == "refreshed"
    # Simulate a second worker that read the row before the first one's commit.
    OAuthConnection.objects.filter(pk=connection.pk).update(refresh_token_ciphertext=stale)
    set_expiry(connection, at(100))

    assert oauth_connection_refresh(connection_id=connection.pk) == "needs_reauth"


def test_a_deleted_connection_is_a_no_op(
    make_connection: Callable[..., OAuthConnection], sandbox: SandboxServer
) -> None:
    connection = make_connection()
    OAuthConnection.objects.filter(pk=connection.pk).delete()
    sandbox.log.clear()
    assert oauth_connection_refresh(connection_id=connection.pk) == "gone"
    assert sandbox.log.records() == []


def test_an_unreadable_refresh_token_needs_reauth(make_connection: Callable[..., OAuthConnection]) -> None:
    connection = make_connection()
    set_expiry(connection, at(100))
    OAuthConnection.objects.filter(pk=connection.pk).update(refresh_token_ciphertext=b"\x01\x02garbage")
    assert oauth_connection_refresh(connection_id=connection.pk) == "needs_reauth"
    connection.refresh_from_db()
    assert connection.last_error_code == OAUTH_TOKEN_UNREADABLE.code


# --- Failures ---------------------------------------------------------------------------------------


def test_transient_failures_back_off_then_recover(
    make_connection: Callable[..., OAuthConnection], monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    connection = make_connection()
    set_expiry(connection, at(300))
    before = tokens_of(connection)
    real_post = oauth._post
    failures = iter(["timeout", "connection_failed", "timeout"])

    def flaky(*args: Any, **kwargs: Any) -> Any:
        reason = next(failures, None)
        if reason:
            raise oauth.TokenEndpointError("transient", reason)
        return real_post(*args, **kwargs)

    monkeypatch.setattr(oauth, "_post", flaky)

    delays = []
    for _ in range(3):
        result = connection_refresh(connection_id=connection.pk)
        assert result.outcome == "failed" and result.retry_in is not None
        delays.append(result.retry_in)
        assert tokens_of(connection) == before
        clock.advance(result.retry_in)
    assert delays == [5.0, 10.0, 20.0]  # exponential backoff
    connection.refresh_from_db()
    assert connection.consecutive_failures == 3 and connection.last_error_code == OAUTH_PROVIDER_UNAVAILABLE.code
    assert connection.status == ConnectionStatus.ACTIVE

    assert connection_refresh(connection_id=connection.pk).outcome == "refreshed"
    connection.refresh_from_db()
    assert (connection.consecutive_failures, connection.last_error_code, connection.last_error_at) == (0, "", None)


def test_the_task_retries_through_celery_with_the_backoff(
    integrations: Callable[..., str], make_connection: Callable[..., OAuthConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = make_connection()
    set_expiry(connection, at(300))
    integrations("gmail", "down")  # the token endpoint answers 503 from now on
    retries: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        retries.append(options)
        return Retry("retry", when=options.get("countdown"))

    monkeypatch.setattr(oauth_connection_refresh, "retry", retry)
    with pytest.raises(Retry):
        oauth_connection_refresh(connection_id=connection.pk)
    assert retries == [{"countdown": 5.0, "expires": 305.0}]


def _raise_transient(*args: Any, **kwargs: Any) -> Any:
    raise oauth.TokenEndpointError("transient", "http_503")


def test_rate_limits_honour_retry_after(
    integrations: Callable[..., str], make_connection: Callable[..., OAuthConnection]
) -> None:
    connection = make_connection()
    set_expiry(connection, at(300))
    integrations("gmail", "ratelimit")  # behaviour words answer before the grant is looked at
    result = connection_refresh(connection_id=connection.pk)
    assert result.outcome == "failed" and result.retry_in == 7.0  # the sandbox's retry-after
    connection.refresh_from_db()
    assert connection.last_error_reason == "http_429"


def test_no_retry_once_the_token_would_have_lapsed(
    make_connection: Callable[..., OAuthConnection], monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    connection = make_connection()
    set_expiry(connection, at(4))  # a retry in 5 s would come after the expiry
    monkeypatch.setattr(oauth, "_post", _raise_transient)
    result = connection_refresh(connection_id=connection.pk)
    assert (result.outcome, result.retry_in) == ("failed", None)
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ACTIVE  # the next tick tries again


def test_after_the_limit_the_connection_gives_up_into_error(
    make_connection: Callable[..., OAuthConnection],
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    sandbox: SandboxServer,
) -> None:
    connection = make_connection()
    set_expiry(connection, at(3000))
    monkeypatch.setattr(oauth, "_post", _raise_transient)
    outcomes = []
    for _ in range(oauth.MAX_CONSECUTIVE_FAILURES):
        set_expiry(connection, clock() + timedelta(seconds=300))
        outcomes.append(connection_refresh(connection_id=connection.pk).outcome)
    assert outcomes == ["failed"] * (oauth.MAX_CONSECUTIVE_FAILURES - 1) + ["error"]
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ERROR
    assert connection.consecutive_failures == oauth.MAX_CONSECUTIVE_FAILURES
    assert connection.last_error_reason == "http_503"
    event = AuditEvent.objects.get(event="oauth_connection.error")
    assert event.details == {"integration": "gmail", "reason": "http_503", "consecutive_failures": 10}
    assert connection_ids_due() == []
    assert connection_refresh(connection_id=connection.pk).outcome == "inactive"
    with pytest.raises(NiyraError) as caught:
        connection_access_token_obtain(user=connection.user, integration="gmail")
    assert caught.value.spec == OAUTH_CONNECTION_ERROR

    # Support's "refresh now" (forced) brings it back once the provider answers again.
    monkeypatch.undo()
    monkeypatch.setattr(oauth, "now", clock)
    assert connection_refresh(connection_id=connection.pk, force=True).outcome == "refreshed"
    connection.refresh_from_db()
    assert (connection.status, connection.consecutive_failures) == (ConnectionStatus.ACTIVE, 0)
    assert AuditEvent.objects.filter(event="oauth_connection.recovered").count() == 1


@pytest.mark.parametrize("word", ["hang", "slow2000"])
def test_a_slow_token_endpoint_times_out_quickly(
    word: str, integrations: Callable[..., str], make_connection: Callable[..., OAuthConnection]
) -> None:
    connection = make_connection()
    before = tokens_of(connection)
    set_expiry(connection, at(300))
    integrations("gmail", word, timeout_seconds=0.3)
    result = connection_refresh(connection_id=connection.pk)
    assert result.outcome == "failed" and result.retry_in == 5.0
    connection.refresh_from_db()
    assert connection.last_error_reason == "timeout"
    assert tokens_of(connection) == before


@pytest.mark.parametrize("word", ["malformed", "invalid"])
def test_unusable_answers_leave_the_tokens_untouched(
    word: str, integrations: Callable[..., str], make_connection: Callable[..., OAuthConnection]
) -> None:
    connection = make_connection()
    before = tokens_of(connection)
    set_expiry(connection, at(300))
    integrations("gmail", word)  # a client the sandbox answers with garbage / refuses
    result = connection_refresh(connection_id=connection.pk)
    assert result.outcome == "failed"
    connection.refresh_from_db()
    assert tokens_of(connection) == before and connection.expires_at == at(300)
    if word == "malformed":
        assert connection.last_error_code == OAUTH_TOKEN_RESPONSE_MALFORMED.code and result.retry_in == 5.0
    else:
        assert connection.last_error_reason == "invalid_client (http_401)" and result.retry_in is None


# --- Short-lived tokens -------------------------------------------------------------------------


def test_a_token_living_less_than_the_window_gets_its_own_follow_up(
    integrations: Callable[..., str],
    make_connection: Callable[..., OAuthConnection],
    queued: Queue,
    django_capture_on_commit_callbacks: Any,
    clock: Clock,
    sandbox: SandboxServer,
) -> None:
    integrations("gmail", "ttl300")
    with django_capture_on_commit_callbacks(execute=True):
        connection = make_connection()
    assert connection.expires_at == at(300)
    # Connected: a follow-up at expires_at - margin (180 s).
    assert [(kwargs, options["countdown"]) for kwargs, options in queued.calls] == [
        ({"connection_id": connection.pk}, 180.0)
    ]
    # The tick right after sees it due (300 s < window) but leaves the young token alone.
    clock.advance(60)
    assert run_all(tick(queued, django_capture_on_commit_callbacks)) == ["fresh"]
    assert refresh_requests(sandbox) == []
    # The follow-up refreshes it with the margin to spare, and queues the next one.
    clock.advance(120)
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert oauth_connection_refresh(connection_id=connection.pk) == "refreshed"
    connection.refresh_from_db()
    assert connection.expires_at == at(480)
    assert queued.calls[0][1]["countdown"] == 180.0


# --- On demand -----------------------------------------------------------------------------------


def test_on_demand_a_fresh_token_is_returned_as_is(
    make_connection: Callable[..., OAuthConnection], sandbox: SandboxServer
) -> None:
    connection = make_connection()
    sandbox.log.clear()
    assert connection_access_token_obtain(user=connection.user, integration="gmail") == tokens_of(connection)[0]
    assert sandbox.log.records() == []


def test_on_demand_a_token_within_the_margin_is_refreshed_first(
    make_connection: Callable[..., OAuthConnection], sandbox: SandboxServer
) -> None:
    connection = make_connection()
    old_access, old_refresh = tokens_of(connection)
    set_expiry(connection, at(90))  # the daemon is late

    token = connection_access_token_obtain(user=connection.user, integration="gmail")

    assert token != old_access and token == tokens_of(connection)[0]
    assert old_refresh is not None and sandbox.log.count_refresh(old_refresh) == 1


def test_on_demand_with_the_provider_down(
    make_connection: Callable[..., OAuthConnection], monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    connection = make_connection()
    access, _ = tokens_of(connection)
    set_expiry(connection, at(90))
    monkeypatch.setattr(oauth, "_post", _raise_transient)
    # Still valid: the current token is better than nothing.
    assert connection_access_token_obtain(user=connection.user, integration="gmail") == access
    # Expired: a clear error, not a dead token.
    clock.advance(100)
    with pytest.raises(NiyraError) as caught:
        connection_access_token_obtain(user=connection.user, integration="gmail")
    assert caught.value.spec == OAUTH_PROVIDER_UNAVAILABLE
