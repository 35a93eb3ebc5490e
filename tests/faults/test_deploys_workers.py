"""Deploys of the worker and of beat: Fly sends SIGTERM to the machine's main process, waits
fly.toml's kill_timeout, then SIGKILLs it; the new machine starts with an empty disk.

* **Worker** (production shape: prefork, more than one task at a time, `acks_late` on Redis).
  SIGTERM is remapped to Celery's cold shutdown (`REMAP_SIGTERM=SIGQUIT` in fly.toml's [env])
  with a soft shutdown first (`CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT`, under kill_timeout): a
  refresh that finishes within it is finished and acknowledged; one that cannot is cancelled
  and its message handed back to Redis at once, so the next worker refreshes it, exactly once.
  Celery's default for SIGTERM, the warm shutdown, waits for every running task however long:
  a task longer than kill_timeout is SIGKILLed and its message stays unacknowledged for the
  broker's visibility timeout (an hour), and the refresh with it.
* **Beat** (RedBeat, `niyra/settings/base.py`): each entry's last run lives in Redis, not in the
  lost disk's schedule file, so a restarted beat sends a tick that fell due while it was away at
  once, and then keeps the cadence; a lock in Redis makes a second beat (a deploy overlapping the
  old machine) wait, and take over when the old one stops: no tick lost, none doubled. Ticks are
  counted as beat publishes them to a private Redis with no worker consuming them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import redis
from django.conf import settings as django_settings

from connections.models import ConnectionStatus, OAuthConnection
from connections.services import connection_connect_complete, connection_connect_start
from connections.tasks import oauth_refresh_tick
from sandbox import SandboxServer
from tests.connections.test_oauth_helpers import REDIRECT_BASE, sandbox_integration, tokens_of
from tests.faults.services import (
    BASE_DIR,
    Beat,
    RedisServer,
    Worker,
    deployment_env,
    in_process_broker,
    private_redis,  # noqa: F401 - fixture
    start_beat,  # noqa: F401 - fixture
    wait_for,
)
from tests.faults.test_worker_faults import make_due, refreshes_presenting

FLY = tomllib.loads((BASE_DIR / "fly.toml").read_text())
KILL_TIMEOUT_SECONDS = int(str(FLY["kill_timeout"]).removesuffix("s"))  # "120s" or 120

# --- The worker -------------------------------------------------------------------------------

SOFT_SHUTDOWN_SECONDS = 2  # the worker's soft shutdown here (production: 20 s, under kill_timeout)
QUICK_MS = 1000  # the token endpoint of a refresh that finishes inside the soft shutdown
SLOW_MS = 5000  # and of one that cannot: cut when the soft shutdown ends

_browser = httpx2.Client(follow_redirects=False, timeout=30)  # waits out a slow authorize page


def connect_patiently(user: Any, integration: str) -> OAuthConnection:
    """`tests.connections.test_oauth_helpers.connect`, with a browser that waits for a slow
    provider (its authorize page and code exchange take SLOW_MS each)."""
    url = connection_connect_start(user=user, integration=integration, redirect_uri=REDIRECT_BASE + integration)
    response = _browser.get(url)
    assert response.status_code == 302, response.text
    query = {name: values[0] for name, values in parse_qs(urlsplit(response.headers["location"]).query).items()}
    return connection_connect_complete(user=user, integration=integration, state=query["state"], code=query["code"])


def test_fly_stops_the_worker_with_a_soft_shutdown_inside_its_kill_timeout() -> None:
    """What the worker test below assumes of the deployment: Fly sends SIGTERM, which the worker
    takes for a cold shutdown with a soft shutdown first, and SIGKILLs only after the soft
    shutdown and the requeue that follows it had time to end."""
    assert FLY.get("kill_signal") == "SIGTERM"
    assert FLY["env"].get("REMAP_SIGTERM") == "SIGQUIT"
    assert KILL_TIMEOUT_SECONDS >= django_settings.CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT + 10
    assert django_settings.CELERY_TASK_ACKS_LATE and django_settings.CELERY_TASK_REJECT_ON_WORKER_LOST


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_deployed_worker_finishes_the_refresh_it_can_and_hands_back_the_one_it_cannot(
    private_redis: RedisServer,  # noqa: F811
    sandbox: SandboxServer,
    settings: Any,
    make_account: Callable[..., Any],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """SIGTERM while two refreshes are in flight: the one that fits the soft shutdown completes
    in the old worker; the other is cut (the provider never answers it, so nothing rotates) and
    handed straight back to the queue, where the new worker refreshes it. Each connection is
    refreshed exactly once and ends active with new, working tokens; nothing is left unacked.
    Fails without the remap (the warm shutdown finishes the slow refresh in the old worker, as
    it would finish, or be SIGKILLed in, a refresh longer than kill_timeout) and without a soft
    shutdown (the quick refresh is cut too)."""
    # Given a prefork worker running two tasks at a time (production: four), with the deployed
    # SIGTERM handling and the broker's production visibility timeout (an hour: only a requeue
    # brings a message back within this test), started while the connections are made
    settings.OAUTH_INTEGRATIONS = {
        "gmail": sandbox_integration(sandbox, f"slow{QUICK_MS}", name="gmail"),
        "drive": sandbox_integration(sandbox, f"slow{SLOW_MS}", name="drive"),
    }
    env = deployment_env(
        redis_url=private_redis.url(),
        sandbox=sandbox,
        REMAP_SIGTERM=FLY["env"].get("REMAP_SIGTERM", ""),
        CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT=str(SOFT_SHUTDOWN_SECONDS),
    )
    old = Worker("old", env, tmp_path, {}, pool="prefork", concurrency=2)
    request.addfinalizer(old.stop)
    # and two due connections: one whose provider answers a refresh in QUICK_MS, one in SLOW_MS
    user = make_account(plan="pro", credits_mc=0)
    quick, slow = connect_patiently(user, "gmail"), connect_patiently(user, "drive")
    for connection in (quick, slow):
        make_due(connection)
    quick_access, quick_refresh = tokens_of(quick)
    slow_access, slow_refresh = tokens_of(slow)
    old.wait_ready()

    # When the tick queues both refreshes and, with both in flight at the provider, the deploy
    # sends the worker SIGTERM and starts the new machine's worker
    with in_process_broker(private_redis.url()):
        assert oauth_refresh_tick() == 2
    wait_for(
        lambda: refreshes_presenting(sandbox, quick_refresh) == refreshes_presenting(sandbox, slow_refresh) == [None],
        timeout=30,
        what="both refreshes in flight",
        interval=0.02,
    )
    old.signal(signal.SIGTERM)
    new = Worker("new", env, tmp_path, {}, pool="prefork", concurrency=2)
    request.addfinalizer(new.stop)

    # Then the old worker exits by itself before Fly would SIGKILL it
    try:
        old.process.wait(timeout=KILL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker still ran at fly.toml's kill_timeout:\n{old.log()[-3000:]}")
    # having finished the quick refresh (answered once, stored)
    assert refreshes_presenting(sandbox, quick_refresh) == [200]
    assert OAuthConnection.objects.filter(pk=quick.pk, last_refreshed_at__isnull=False).exists()
    # and cut the slow one: the provider never answered it, so rotated nothing (the new worker,
    # once ready, may already hold the handed-back message and be waiting on the provider)
    assert refreshes_presenting(sandbox, slow_refresh) in ([None], [None, None])
    assert OAuthConnection.objects.get(pk=slow.pk).last_refreshed_at is None

    # When the new worker runs
    new.wait_ready()

    # Then the slow refresh was handed back to the queue, and the new worker refreshes it
    wait_for(
        lambda: OAuthConnection.objects.filter(pk=slow.pk, last_refreshed_at__isnull=False).exists(),
        timeout=30,
        what="the handed-back refresh",
        interval=0.2,
    )
    assert refreshes_presenting(sandbox, slow_refresh) == [None, 200]
    assert len(re.findall(r"oauth_connection_refresh\[[-\w]+\] received", new.log())) == 1
    # so each connection was refreshed exactly once, and is active with its new, working tokens
    successful = [r for r in sandbox.log.records() if r["grant_type"] == "refresh_token" and r["status"] == 200]
    assert len(successful) == 2
    for connection, (access, refresh) in ((quick, (quick_access, quick_refresh)), (slow, (slow_access, slow_refresh))):
        connection.refresh_from_db()
        assert (connection.status, connection.consecutive_failures) == (ConnectionStatus.ACTIVE, 0)
        new_access, new_refresh = tokens_of(connection)
        assert new_access != access and new_refresh not in (None, refresh)
        userinfo = httpx2.get(f"{sandbox.oauth_base_url}/userinfo", headers={"Authorization": f"Bearer {new_access}"})
        assert userinfo.status_code == 200
    # and nothing is left to deliver again, now or after the visibility timeout
    broker = redis.Redis.from_url(private_redis.url())
    wait_for(lambda: (broker.llen("celery"), broker.hlen("unacked")) == (0, 0), timeout=10, what="an empty queue")


# --- Beat -------------------------------------------------------------------------------------

INTERVAL = 3.0  # seconds between refresh ticks here (production: OAUTH_REFRESH_INTERVAL_SECONDS, 300)
TICK_TASK = "connections.tasks.oauth_refresh_tick"


class Ticks:
    """The refresh ticks beats published to the private Redis: when each was first seen
    (`time.monotonic()`) and which beat sent it (the pid in the message's `origin`). Nothing
    consumes the queue, so it only grows; a thread reads it every 20 ms."""

    def __init__(self, url: str) -> None:
        self.seen: list[tuple[float, int]] = []
        self._client = redis.Redis.from_url(url)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.02):
            headers = [json.loads(message)["headers"] for message in self._client.lrange("celery", 0, -1)]
            senders = [int(h["origin"].removeprefix("gen").split("@")[0]) for h in headers if h["task"] == TICK_TASK]
            now = time.monotonic()
            # LPUSH: the newest message first
            self.seen.extend((now, pid) for pid in reversed(senders[: len(senders) - len(self.seen)]))

    def wait(self, count: int) -> list[tuple[float, int]]:
        """The ticks, once there are at least `count`."""
        wait_for(lambda: len(self.seen) >= count, timeout=30 + count * INTERVAL, what=f"{count} ticks", interval=0.02)
        return list(self.seen)

    def __enter__(self) -> Ticks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)


@pytest.fixture
def beat_env(private_redis: RedisServer, sandbox: SandboxServer) -> dict[str, str]:  # noqa: F811
    """The deployment's beat on the private Redis, the refresh tick every INTERVAL seconds, and
    beat waking (and a waiting beat trying for the lock) every second."""
    return deployment_env(
        redis_url=private_redis.url(),
        sandbox=sandbox,
        OAUTH_REFRESH_INTERVAL_SECONDS=str(int(INTERVAL)),
        CELERY_BEAT_MAX_LOOP_INTERVAL="1",
    )


def assert_none_doubled(ticks: list[tuple[float, int]]) -> None:
    gaps = [later - earlier for (earlier, _), (later, _) in pairwise(ticks)]
    assert all(gap >= INTERVAL / 2 for gap in gaps), f"ticks closer than half an interval: {gaps}"


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


@pytest.mark.redis
def test_a_restarted_beat_sends_the_tick_that_fell_due_and_keeps_the_cadence(
    private_redis: RedisServer,  # noqa: F811
    start_beat: Callable[..., Beat],  # noqa: F811
    beat_env: dict[str, str],
) -> None:
    """Beat stopped at 80% of an interval and started again on a new machine: the tick that fell
    due meanwhile is sent as soon as the new beat runs, then the cadence goes on; nothing doubled.
    Fails with Celery's default scheduler: the new machine's empty schedule file starts every
    entry over, so the first tick after the restart comes a whole interval after the new beat
    starts (and with a short outage, one tick is lost)."""
    # Given a beat sending the refresh tick every INTERVAL seconds
    old = start_beat(beat_env, "old")
    with Ticks(private_redis.url()) as ticks:
        ((last, _),) = ticks.wait(1)

        # When, 80% of an interval after a tick, the deploy stops it (SIGTERM) and beat starts
        # again on a new machine, its disk empty
        sleep_until(last + 0.8 * INTERVAL)
        old.signal(signal.SIGTERM)
        old.wait_exit(timeout=30)
        new = start_beat(beat_env, "new")
        started = new.wait_started()
        seen = ticks.wait(3)

    # Then the new beat sends the tick that fell due while beat was away as soon as it runs (or
    # when due, if it was back before), not an interval later
    (first, first_by), (second, second_by) = seen[1], seen[2]
    assert (first_by, second_by) == (new.process.pid, new.process.pid)
    assert first <= max(last + INTERVAL, started) + INTERVAL / 2, (last, started, seen)
    # and the cadence goes on from it, no tick doubled
    assert second - first <= INTERVAL * 1.5, seen
    assert_none_doubled(seen)


@pytest.mark.slow
@pytest.mark.redis
def test_a_second_beat_waits_while_the_first_runs_and_takes_over_when_it_stops(
    private_redis: RedisServer,  # noqa: F811
    start_beat: Callable[..., Beat],  # noqa: F811
    beat_env: dict[str, str],
) -> None:
    """Two beats overlapping (a deploy starting the new machine before the old one stops): the
    second waits for RedBeat's lock, sends nothing while the first runs, and takes over within
    an interval once it stops; no tick doubled or lost. Fails with Celery's default scheduler:
    nothing stops the second beat, which sends its own ticks beside the first one's."""
    # Given a beat sending the refresh tick every INTERVAL seconds
    old = start_beat(beat_env, "old")
    old.wait_started()
    with Ticks(private_redis.url()) as ticks:
        # When a second beat starts beside it (a deploy overlapping the old machine) and both run
        # for one and a half intervals
        new = start_beat(beat_env, "new")
        sleep_until(new.wait_started() + 1.5 * INTERVAL)

        # Then every tick so far was the old beat's
        overlap = ticks.wait(1)
        assert {pid for _, pid in overlap} == {old.process.pid}

        # When the old beat stops
        old.signal(signal.SIGTERM)
        old.wait_exit(timeout=30)
        seen = ticks.wait(len(ticks.seen) + 2)

    # Then the new beat took over: the old beat's ticks, then only the new one's, the first
    # within an interval of the last (plus the second it may take to find the lock free)
    before = [at for at, pid in seen if pid == old.process.pid]
    after = [at for at, pid in seen if pid == new.process.pid]
    assert [pid for _, pid in seen] == [old.process.pid] * len(before) + [new.process.pid] * len(after), seen
    assert len(after) >= 2 and after[0] - before[-1] <= INTERVAL + 1 + INTERVAL / 2, seen
    # and no tick was doubled
    assert_none_doubled(seen)


@pytest.mark.parametrize(
    ("redis_url", "scheduler"),
    [("", "celery.beat:PersistentScheduler"), ("redis://127.0.0.1:1/0", "redbeat.RedBeatScheduler")],
    ids=["quick-start-without-redis", "with-redis"],
)
def test_beat_keeps_its_schedule_in_redis_and_without_redis_in_its_file(redis_url: str, scheduler: str) -> None:
    """`make run` (development settings, Procfile.dev's unchanged beat command) with Redis keeps
    beat's schedule there; the quick start without Redis (the filesystem broker) has nowhere for
    RedBeat's schedule and lock, and keeps Celery's default scheduler and its file in var/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_URL", "DJANGO_", "PYTEST_"))}
    env.update(DJANGO_SETTINGS_MODULE="niyra.settings.development", NIYRA_READ_DOTENV="0", REDIS_URL=redis_url)
    chosen = subprocess.run(
        [sys.executable, "-c", "from niyra.celery import app; print(app.conf.beat_scheduler)"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert chosen.stdout.strip() == scheduler
