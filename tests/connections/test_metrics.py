"""The refresh daemon's metrics: the tick's due count and duration, each refresh's outcome and
margin, and the worst margin over active connections (the "no token ever lapses" promise).

Given connections placed on the injected timeline (as in test_oauth_refresh), when the tick and
its refresh tasks run against the sandbox, then the figures move by exactly what happened.
Tests run single-process: the default registry holds the figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from celery.exceptions import Retry
from prometheus_client import REGISTRY

from connections.models import OAuthConnection
from connections.tasks import oauth_connection_refresh, oauth_refresh_tick
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import T0, Clock, Queue, connect, set_expiry

clock = helpers.clock
integrations = helpers.integrations
queued = helpers.queued

pytestmark = pytest.mark.django_db


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def refreshes(outcome: str, integration: str = "gmail") -> float:
    return value("niyra_oauth_refreshes_total", integration=integration, outcome=outcome)


def margins(le: str | None = None) -> float:
    if le is None:
        return value("niyra_oauth_refresh_margin_seconds_count")
    return value("niyra_oauth_refresh_margin_seconds_bucket", le=le)


def tick(queued: Queue, capture: Any) -> list[int]:
    """The beat tick (its on-commit fan-out included); the ids it queued."""
    queued.clear()
    with capture(execute=True):
        oauth_refresh_tick()
    return queued.ids()


@pytest.fixture
def make_connection(
    make_plan_user: Callable[..., Any], integrations: Callable[..., str], clock: Clock
) -> Callable[..., OAuthConnection]:
    integrations("gmail")

    def make() -> OAuthConnection:
        return connect(make_plan_user("pro"), "gmail")

    return make


def test_a_tick_and_its_refreshes_record_due_outcome_margin_and_worst_margin(
    make_connection: Callable[..., OAuthConnection], queued: Queue, django_capture_on_commit_callbacks: Any
) -> None:
    # Given a connection whose token expires 200 s after the tick (due: the window is 420 s)
    connection = make_connection()
    set_expiry(connection, T0 + timedelta(seconds=200))
    ticks = value("niyra_oauth_refresh_tick_duration_seconds_count")
    refreshed, lapsed, observed = refreshes("refreshed"), refreshes("refreshed_lapsed"), margins()
    at_240, at_180, at_0 = margins("240.0"), margins("180.0"), margins("0.0")

    # When the tick runs
    ids = tick(queued, django_capture_on_commit_callbacks)

    # Then it was timed and found one due; no connection has a refresh margin yet
    assert ids == [connection.pk]
    assert value("niyra_oauth_refresh_tick_duration_seconds_count") == ticks + 1
    assert gauge("niyra_oauth_refresh_due") == 1
    worst = gauge("niyra_oauth_refresh_worst_margin_seconds")
    assert worst is not None and math.isnan(worst)

    # When its refresh runs, 200 s before the old token's expiry
    assert oauth_connection_refresh(connection_id=connection.pk) == "refreshed"

    # Then one refresh counts, with its margin, and the connection keeps it
    assert (refreshes("refreshed"), refreshes("refreshed_lapsed")) == (refreshed + 1, lapsed)
    assert margins() == observed + 1
    assert (margins("240.0"), margins("180.0"), margins("0.0")) == (at_240 + 1, at_180, at_0)
    connection.refresh_from_db()
    assert connection.last_refresh_margin_seconds == 200

    # And the next tick finds nothing due and the worst margin is that refresh's
    assert tick(queued, django_capture_on_commit_callbacks) == []
    assert gauge("niyra_oauth_refresh_due") == 0
    assert gauge("niyra_oauth_refresh_worst_margin_seconds") == 200

    # And a reconnect (a new grant, not a refresh) has no margin
    connect(connection.user, "gmail")
    connection.refresh_from_db()
    assert connection.last_refresh_margin_seconds is None


def test_a_lapsed_active_connection_makes_the_worst_margin_negative(
    make_connection: Callable[..., OAuthConnection],
    queued: Queue,
    clock: Clock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # Given a healthy connection refreshed 300 s early, and one whose token lapsed 90 s ago
    healthy, lapsed = make_connection(), make_connection()
    set_expiry(healthy, T0 + timedelta(seconds=300))
    assert oauth_connection_refresh(connection_id=healthy.pk) == "refreshed"
    set_expiry(lapsed, T0 - timedelta(seconds=90))

    # When the tick runs
    assert tick(queued, django_capture_on_commit_callbacks) == [lapsed.pk]

    # Then the worst margin is the lapse, negative
    assert gauge("niyra_oauth_refresh_worst_margin_seconds") == -90

    # When the lapsed one is refreshed 30 s later, it counts as a lapsed refresh (margin 0)
    refreshed, observed, at_0 = refreshes("refreshed_lapsed"), margins(), margins("0.0")
    clock.advance(30)
    assert oauth_connection_refresh(connection_id=lapsed.pk) == "refreshed"
    assert (refreshes("refreshed_lapsed"), margins(), margins("0.0")) == (refreshed + 1, observed + 1, at_0 + 1)

    # And the next tick still says the promise was broken: its latest refresh came 120 s late
    tick(queued, django_capture_on_commit_callbacks)
    assert gauge("niyra_oauth_refresh_worst_margin_seconds") == -120


@pytest.mark.parametrize(("word", "outcome"), [("revoked", "needs_reauth"), ("down", "retry")])
def test_a_failed_refresh_counts_its_outcome_and_no_margin(
    word: str, outcome: str, make_connection: Callable[..., OAuthConnection], integrations: Callable[..., str]
) -> None:
    connection = make_connection()
    set_expiry(connection, T0 + timedelta(seconds=200))
    integrations("gmail", word)  # the token endpoint now refuses the grant, or answers 503
    before, observed = refreshes(outcome), margins()

    if outcome == "retry":
        with pytest.raises(Retry):  # the task retries while the token still works
            oauth_connection_refresh(connection_id=connection.pk)
    else:
        assert oauth_connection_refresh(connection_id=connection.pk) == outcome

    assert refreshes(outcome) == before + 1
    assert margins() == observed


def test_refreshes_are_recorded_only_while_metrics_are_enabled(
    make_connection: Callable[..., OAuthConnection], settings: Any
) -> None:
    off, on = make_connection(), make_connection()
    set_expiry(off, T0 + timedelta(seconds=200))
    set_expiry(on, T0 + timedelta(seconds=200))
    before, observed = refreshes("refreshed"), margins()

    settings.METRICS_ENABLED = False
    assert oauth_connection_refresh(connection_id=off.pk) == "refreshed"
    assert (refreshes("refreshed"), margins()) == (before, observed)

    settings.METRICS_ENABLED = True
    assert oauth_connection_refresh(connection_id=on.pk) == "refreshed"
    assert (refreshes("refreshed"), margins()) == (before + 1, observed + 1)
