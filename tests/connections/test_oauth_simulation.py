"""A simulated day of the refresh daemon: no active token is ever expired.

Given N connections with random lifetimes between 5 and 60 minutes (each its own sandbox client,
`ttl<seconds>`), connected at random moments, when the tick runs every 5 simulated minutes and
every queued task (tick fan-out, Celery retries after transient failures, follow-ups of
short-lived tokens) runs at its simulated time, with 5% of token requests failing transiently,
then at no moment is an active connection's token expired, every connection is still active,
and the sandbox saw each refresh token exactly once.

The clock is injected (connections.oauth.now); the tasks run in simulated time order on one thread
(the concurrency test covers racing workers). Each refresh is a real one (PostgreSQL row lock,
sandbox round trip), a few milliseconds, so the default run is 1,000 connections over one
simulated hour (~3,800 refreshes; every lifetime through a full cycle, the short ones through
many) to keep the suite fast; `NIYRA_OAUTH_SIM_HOURS=24` runs the full day (~90,000 refreshes,
five to ten minutes).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from connections import oauth, tasks
from connections.models import ConnectionStatus, OAuthConnection
from connections.services import connection_refresh
from sandbox import SandboxServer
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import (
    T0,
    Clock,
    connect,
    refresh_requests,
    sandbox_integration,
)

# Shared fixtures (assigned, not imported, so the test functions' parameters don't shadow an import).
clock = helpers.clock

pytestmark = pytest.mark.django_db

logger = logging.getLogger(__name__)
CONNECTIONS = int(os.environ.get("NIYRA_OAUTH_SIM_CONNECTIONS", "1000"))
HOURS = float(os.environ.get("NIYRA_OAUTH_SIM_HOURS", "1"))
FAILURE_RATE = 0.05
INTERVAL = 300


def test_a_simulated_day_never_lets_an_active_token_expire(
    settings: Any,
    sandbox: SandboxServer,
    clock: Clock,
    make_plan_user: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    rng = random.Random(20260601)  # deterministic: the same day every run
    lifetimes = [rng.randint(5 * 60, 60 * 60) for _ in range(CONNECTIONS)]
    settings.OAUTH_INTEGRATIONS = {
        f"sim{n}": sandbox_integration(sandbox, f"ttl{lifetime}", name=f"sim{n}")
        for n, lifetime in enumerate(lifetimes)
    }
    user = make_plan_user("pro")

    # The event queue: (simulated time, order, connection id). Everything the code queues for the
    # refresh task lands here at its countdown; transient failures are injected 5% of the time.
    events: list[tuple[Any, int, int]] = []
    order = itertools.count()

    def apply_async(args: Any = None, kwargs: Any = None, countdown: float | None = None, **options: Any) -> None:
        heapq.heappush(events, (clock() + timedelta(seconds=countdown or 0), next(order), kwargs["connection_id"]))

    monkeypatch.setattr(tasks.oauth_connection_refresh, "apply_async", apply_async)
    real_post = oauth._post
    injected = Counter[str]()

    def flaky_post(integration: Any, url: str, data: dict[str, str]) -> Any:
        if data.get("grant_type") == "refresh_token" and rng.random() < FAILURE_RATE:
            injected["failures"] += 1
            raise oauth.TokenEndpointError("transient", rng.choice(["timeout", "http_503", "connection_failed"]))
        return real_post(integration, url, data)

    # Connected at random moments during the interval before the first tick.
    for n, offset in sorted(enumerate(rng.uniform(-INTERVAL, 0) for _ in range(CONNECTIONS)), key=lambda x: x[1]):
        clock.at = T0 + timedelta(seconds=offset)
        with django_capture_on_commit_callbacks(execute=True):
            connect(user, f"sim{n}")
    sandbox.log.clear()
    monkeypatch.setattr(oauth, "_post", flaky_post)

    lapses: list[str] = []
    outcomes = Counter[str]()
    lifetime = {
        pk: timedelta(seconds=lifetimes[int(name.removeprefix("sim"))])
        for pk, name in OAuthConnection.objects.values_list("pk", "integration")
    }
    expected = dict(OAuthConnection.objects.values_list("pk", "expires_at"))  # kept in step below

    def run_task(connection_id: int) -> None:
        before = expected[connection_id]
        with django_capture_on_commit_callbacks(execute=True):
            result = connection_refresh(connection_id=connection_id)
        outcomes[result.outcome] += 1
        if result.outcome == "refreshed":
            if before <= clock():
                lapses.append(f"connection {connection_id} expired {clock() - before} before its refresh")
            expected[connection_id] = clock() + lifetime[connection_id]
        if result.retry_in is not None:  # the task's Celery retry
            heapq.heappush(events, (clock() + timedelta(seconds=result.retry_in), next(order), connection_id))

    def check_nothing_expired() -> None:
        """One query per tick: the database agrees with the expiries tracked above, and no
        active connection is expired."""
        stored = dict(OAuthConnection.objects.filter(status=ConnectionStatus.ACTIVE).values_list("pk", "expires_at"))
        assert stored == expected, "an expiry changed without a refresh, or a connection left 'active'"
        lapses.extend(f"connection {pk} expired at a tick" for pk, at in stored.items() if at <= clock())

    end = T0 + timedelta(hours=HOURS)
    next_tick = T0
    while next_tick <= end:
        while events and events[0][0] < next_tick:
            clock.at, _, connection_id = heapq.heappop(events)
            run_task(connection_id)
        clock.at = next_tick
        check_nothing_expired()
        with django_capture_on_commit_callbacks(execute=True):
            tasks.oauth_refresh_tick()
        while events and events[0][0] <= next_tick:
            _, _, connection_id = heapq.heappop(events)
            run_task(connection_id)
        next_tick += timedelta(seconds=INTERVAL)

    logger.info(
        "simulated %s h, %s connections: %s, %s injected failures, %s lapses",
        HOURS,
        CONNECTIONS,
        dict(outcomes),
        injected["failures"],
        len(lapses),
    )
    assert lapses == []
    assert injected["failures"] > 0 and outcomes["refreshed"] > CONNECTIONS
    statuses = Counter(OAuthConnection.objects.values_list("status", flat=True))
    assert statuses == {ConnectionStatus.ACTIVE: CONNECTIONS}
    requests = refresh_requests(sandbox)
    assert len(requests) == outcomes["refreshed"]  # injected failures never reached the sandbox
    assert all(r["status"] == 200 for r in requests)
    assert max(Counter(r["refresh_token_id"] for r in requests).values()) == 1
