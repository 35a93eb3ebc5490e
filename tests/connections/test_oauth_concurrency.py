"""Exactly one refresh per refresh token, under real concurrency (PostgreSQL row locks).

Two ticks queue the same due connections twice; four worker threads run the task function on
them at once, against a token endpoint slow enough (30 ms) that they really overlap. The sandbox
rotates refresh tokens and revokes the whole grant if one is presented twice.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from django.db import connections

from connections.models import OAuthConnection
from connections.services import connection_access_token_obtain, connection_disconnect
from connections.tasks import oauth_connection_refresh, oauth_refresh_tick
from sandbox import SandboxServer
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import (
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

pytestmark = [pytest.mark.django_db(transaction=True)]

WORKERS = 4


def run_in_threads(work: list[Callable[[], Any]], workers: int = WORKERS) -> list[Any]:
    """Run the callables on `workers` threads that start together; their results (or exceptions)."""
    jobs: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
    for job in work:
        jobs.put(job)
    results: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(workers)

    def worker() -> None:
        start.wait()
        try:
            while True:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    result = job()
                except Exception as exc:  # reported to the test
                    result = exc
                with lock:
                    results.append(result)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_two_ticks_and_four_workers_refresh_each_token_exactly_once(
    integrations: Callable[..., str],
    make_plan_user: Callable[..., Any],
    clock: Clock,
    queued: Queue,
    sandbox: SandboxServer,
) -> None:
    # Given 24 connections, all due
    integrations("gmail", "slow30")
    conns = [connect(make_plan_user("pro")) for _ in range(24)]
    for connection in conns:
        set_expiry(connection, clock() + timedelta(seconds=90))
    old = {c.pk: tokens_of(c) for c in conns}
    sandbox.log.clear()

    # When two ticks queue them (twice) and four workers race through the queue
    oauth_refresh_tick()
    oauth_refresh_tick()
    ids = queued.ids()
    assert sorted(ids) == sorted([c.pk for c in conns] * 2)
    interleaved = [pk for pair in zip(ids[: len(conns)], ids[len(conns) :], strict=True) for pk in pair]
    outcomes = run_in_threads([lambda pk=pk: oauth_connection_refresh(connection_id=pk) for pk in interleaved])

    # Then each connection was refreshed once; the duplicates found it locked or fresh
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    counts = Counter(outcomes)
    assert counts["refreshed"] == len(conns)
    assert set(counts) <= {"refreshed", "locked", "fresh"}
    # And the sandbox saw exactly one refresh per refresh token, every one of them answered 200
    requests = refresh_requests(sandbox)
    assert len(requests) == len(conns)
    assert all(r["status"] == 200 for r in requests)
    for connection in conns:
        _, old_refresh = old[connection.pk]
        assert old_refresh is not None and sandbox.log.count_refresh(old_refresh) == 1
        new_access, new_refresh = tokens_of(connection)
        assert new_refresh not in (None, old_refresh)
        # No grant was revoked: the new access token works at the provider.
        userinfo = httpx2.get(
            f"{sandbox.oauth_base_url}/userinfo", headers={"Authorization": f"Bearer {new_access}"}, timeout=5
        )
        assert userinfo.status_code == 200


def _wait_for_pending_refresh(sandbox: SandboxServer) -> None:
    deadline = time.monotonic() + 5
    while not any(r["grant_type"] == "refresh_token" for r in sandbox.log.records()):
        assert time.monotonic() < deadline, "the refresh never reached the sandbox"
        time.sleep(0.01)


def test_on_demand_waits_for_the_daemons_refresh_instead_of_starting_a_second_one(
    integrations: Callable[..., str], make_plan_user: Callable[..., Any], clock: Clock, sandbox: SandboxServer
) -> None:
    integrations("gmail", "slow300")
    connection = connect(make_plan_user("pro"))
    set_expiry(connection, clock() + timedelta(seconds=30))  # inside the margin: on demand refreshes too
    _, old_refresh = tokens_of(connection)
    sandbox.log.clear()
    results: list[Any] = []

    daemon = threading.Thread(
        target=lambda: (results.append(oauth_connection_refresh(connection_id=connection.pk)), connections.close_all())
    )
    daemon.start()
    _wait_for_pending_refresh(sandbox)  # the daemon holds the row lock now
    token = connection_access_token_obtain(user=connection.user, integration="gmail")
    daemon.join(10)

    assert results == ["refreshed"]
    assert token == tokens_of(connection)[0]
    assert old_refresh is not None and sandbox.log.count_refresh(old_refresh) == 1
    assert len(refresh_requests(sandbox)) == 1


def test_disconnect_during_a_refresh_waits_and_revokes_the_final_tokens(
    integrations: Callable[..., str], make_plan_user: Callable[..., Any], clock: Clock, sandbox: SandboxServer
) -> None:
    integrations("gmail", "slow300")
    user = make_plan_user("pro")
    connection = connect(user)
    set_expiry(connection, clock() + timedelta(seconds=90))
    old_access, _ = tokens_of(connection)
    sandbox.log.clear()
    results: list[Any] = []

    daemon = threading.Thread(
        target=lambda: (results.append(oauth_connection_refresh(connection_id=connection.pk)), connections.close_all())
    )
    daemon.start()
    _wait_for_pending_refresh(sandbox)
    connection_disconnect(user=user, integration="gmail")
    daemon.join(10)

    assert results == ["refreshed"]
    assert not OAuthConnection.objects.exists()
    # The delete waited for the refresh to commit, then the grant was revoked (with the refresh
    # token the daemon had just stored: the one read under the lock).
    [revoke] = [r for r in sandbox.log.records() if r["path"].endswith("/revoke")]
    assert revoke["status"] == 200 and revoke["at"] > refresh_requests(sandbox)[0]["at"]
    assert not any(r["status"] == 400 for r in sandbox.log.records())
    userinfo = httpx2.get(
        f"{sandbox.oauth_base_url}/userinfo", headers={"Authorization": f"Bearer {old_access}"}, timeout=5
    )
    assert userinfo.status_code == 401
    assert oauth_connection_refresh(connection_id=connection.pk) == "gone"
