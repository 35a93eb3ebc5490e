"""A Celery worker that no longer consumes ends its process with status 1 (core.liveness), so that
its machine is restarted: Fly restarts a machine whose main process exits, never one whose
health check fails.

The workers here are `celery -A niyra worker` as production runs it (the prefork pool, the exit
status of the program itself) on a private Redis, with the watchdog's interval and timeout cut to
seconds. A worker left alive but consuming nothing (its consumers cancelled: connected, up and
idle for good, as the stuck workers of several Celery/kombu releases were) and a worker whose
broker is gone both exit 1 within the timeout, with one ERROR line; the worker that held a
reserved message when Redis went away (kombu 5.7's "'NoneType' object has no attribute
'hostname'") ends non-zero too. A healthy worker with no beat running never exits, and an
in-process test worker never starts the watchdog.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from core.liveness import LivenessWatchdog, liveness_stamp_path, liveness_stamp_write
from core.tasks import echo
from niyra.celery import app
from sandbox import SandboxServer
from tests.faults.services import (
    BASE_DIR,
    START_TIMEOUT_SECONDS,
    RedisServer,
    deployment_env,
    free_port,
    in_process_broker,
    private_redis,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = pytest.mark.redis

INTERVAL_SECONDS = 0.5
TIMEOUT_SECONDS = 3.0
EXIT_BOUND_SECONDS = TIMEOUT_SECONDS + 20  # a hang-bound on two shared cores, never a speed check
WATCHDOG_ERROR = "worker liveness: no ping has run on"


# --- A worker as production runs it -------------------------------------------------------------


def livez(port: int) -> tuple[int, dict[str, Any]] | None:
    """GET /livez: its status and JSON body, or None when nothing answers."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/livez")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    except OSError:
        return None


def proc_state(pid: int) -> str | None:
    """The process's state letter (`Z`: a zombie), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


class CeleryWorker:
    """`celery -A niyra worker` (prefork, one pool process) with the watchdog's settings cut to
    seconds and /livez on a free loopback port."""

    def __init__(self, env: Mapping[str, str], logdir: Path) -> None:
        self.hostname = f"live-{uuid.uuid4().hex[:8]}@liveness"  # its own stamp file
        self.port = free_port()
        self.log_path = logdir / f"worker-{self.hostname}.log"
        argv = [sys.executable, "-m", "celery", "-A", "niyra", "worker", "--concurrency=1", "--loglevel=INFO"]
        argv += [f"--hostname={self.hostname}", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.process = subprocess.Popen(
            argv,
            env={
                **env,
                "WORKER_LIVENESS_INTERVAL_SECONDS": str(INTERVAL_SECONDS),
                "WORKER_LIVENESS_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
                "WORKER_LIVENESS_LISTEN": f"127.0.0.1:{self.port}",
            },
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=BASE_DIR,
            start_new_session=True,  # its own process group: stopped without touching anyone else
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def livez(self) -> tuple[int, dict[str, Any]] | None:
        return livez(self.port)

    def wait_consuming(self) -> CeleryWorker:
        """Ready, and a ping went round (through Redis, the pool process, the stamp file)."""

        def consuming() -> bool:
            assert self.process.poll() is None, f"worker exited:\n{self.log()[-3000:]}"
            answer = self.livez()
            return answer is not None and answer[0] == 200

        wait_for(consuming, timeout=START_TIMEOUT_SECONDS, what="the worker's first ping", interval=0.1)
        return self

    def wait_exit(self) -> int:
        try:
            return self.process.wait(timeout=EXIT_BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker is still running {EXIT_BOUND_SECONDS:.0f} s on:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def start_worker(tmp_path: Path, sandbox: SandboxServer) -> Iterator[Callable[[RedisServer], CeleryWorker]]:
    started: list[CeleryWorker] = []

    def start(redis: RedisServer) -> CeleryWorker:
        worker = CeleryWorker(deployment_env(redis_url=redis.url(), sandbox=sandbox), tmp_path)
        started.append(worker)
        return worker.wait_consuming()

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
            liveness_stamp_path(worker.hostname).unlink(missing_ok=True)


def assert_exited_by_the_watchdog(worker: CeleryWorker, pool: list[int]) -> None:
    assert worker.wait_exit() == 1, worker.log()[-3000:]
    assert worker.log().count(WATCHDOG_ERROR) == 1, worker.log()[-3000:]
    # one JSON line (settings.LOGGING: the worker logs through it), from the watchdog's logger
    assert re.search(r'"level": "ERROR", "logger": "core.liveness", "message": "' + WATCHDOG_ERROR, worker.log())
    # the pool's processes did not outlive it (reparented, they would consume nothing, forever)
    wait_for(
        lambda: all(proc_state(pid) in (None, "Z") for pid in pool),
        timeout=10,
        what="the pool processes to die with the worker",
    )


# --- The tests ----------------------------------------------------------------------------------


@pytest.mark.slow  # ~15-25 s: three timeouts of watching, then one to exit
@pytest.mark.django_db
def test_a_worker_lives_while_it_consumes_and_exits_1_once_it_stops(
    private_redis: RedisServer,  # noqa: F811
    start_worker: Callable[[RedisServer], CeleryWorker],
) -> None:
    """The stuck worker: up, connected, consuming nothing, with nothing in its log to say so. And
    no false alarm before: with no beat running (the pings are the worker's own), an idle worker
    outlives several timeouts."""
    # Given an idle worker whose pings go round, and no beat
    worker = start_worker(private_redis)
    pool = child_pids(worker.process.pid)
    assert pool, "no pool process"

    # When three timeouts pass, then it is still up and /livez says so
    deadline = time.monotonic() + 3 * TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert worker.process.poll() is None, worker.log()[-3000:]
        time.sleep(0.25)
    answer = worker.livez()
    assert answer is not None and answer[0] == 200, answer
    assert WATCHDOG_ERROR not in worker.log()
    assert "Task core.liveness.ping[" not in worker.log()  # dozens of pings, not one line at INFO

    # When it stops consuming from every queue (remote control: the process stays up, connected)
    with in_process_broker(private_redis.url()):
        for queue in ("celery", f"{worker.hostname}.dq2"):
            replies = app.control.cancel_consumer(queue, destination=[worker.hostname], reply=True, timeout=5)
            assert replies and "ok" in replies[0][worker.hostname], replies

    # Then within the timeout it says why and exits 1, its pool process with it
    assert_exited_by_the_watchdog(worker, pool)


@pytest.mark.django_db
def test_a_worker_whose_broker_is_gone_exits_with_status_1(
    private_redis: RedisServer,  # noqa: F811
    start_worker: Callable[[RedisServer], CeleryWorker],
) -> None:
    """No ping can even be queued: that is not consuming either. The restarted worker waits for
    the broker at boot (broker_connection_retry_on_startup) before it is ready."""
    # Given a worker whose pings go round
    worker = start_worker(private_redis)
    pool = child_pids(worker.process.pid)

    # When Redis is shut down and stays down (Celery itself would retry for many minutes)
    private_redis.stop()

    # Then within the timeout the worker says why and exits 1
    assert_exited_by_the_watchdog(worker, pool)
    assert "worker liveness: cannot queue a ping" in worker.log()


@pytest.mark.django_db
def test_a_worker_holding_a_reserved_message_when_redis_goes_away_exits_non_zero(
    private_redis: RedisServer,  # noqa: F811
    start_worker: Callable[[RedisServer], CeleryWorker],
) -> None:
    """The case of issue 16 and of test_redis_faults: a worker holding an unacknowledged message
    (an ETA task) when the connection drops cannot hand it back (kombu 5.7.0: "Unrecoverable
    error: AttributeError(\"'NoneType' object has no attribute 'hostname'\")", every time Redis
    is still down when the worker notices). With Celery 5.7 the program then exits 1 by itself;
    were a release to leave it up instead, the watchdog would end it. Either way it must end
    non-zero, for its machine to be restarted, and never stay up idle."""
    # Given a worker holding a task due in a minute
    worker = start_worker(private_redis)
    with in_process_broker(private_redis.url()):
        echo.apply_async(kwargs={"value": "later", "cache_key": "liveness-eta"}, countdown=60)
    wait_for(lambda: "Task core.tasks.echo[" in worker.log(), timeout=10, what="the worker to reserve the ETA task")

    # When Redis is shut down, and started again once the worker has noticed
    private_redis.stop()
    wait_for(
        lambda: "Connection to broker lost" in worker.log() or worker.process.poll() is not None,
        timeout=10,
        what="the worker to notice",
    )
    private_redis.start()

    # Then the worker ends, non-zero, saying why
    status = worker.wait_exit()
    log = worker.log()
    assert status != 0, log[-3000:]
    assert ("Unrecoverable error" in log and "'hostname'" in log) or WATCHDOG_ERROR in log, log[-3000:]


def test_livez_is_503_until_one_of_its_own_pings_has_run(tmp_path: Path) -> None:
    """/livez and the stamp file, without a worker: a stamp another process left (the same
    worker name before a restart) does not count; a ping of this watchdog does."""
    hostname = f"unit-{uuid.uuid4().hex[:8]}@liveness"
    stamp = liveness_stamp_path(hostname)
    stamp.write_text("an-earlier-process:1")
    port = free_port()
    watchdog = LivenessWatchdog(hostname, interval=60, timeout=600, listen=f"127.0.0.1:{port}")
    watchdog._serve()  # the endpoint alone: no pings are queued, the process never exits
    try:
        watchdog.observe()
        answer = livez(port)
        assert answer is not None
        assert (answer[0], answer[1]["status"]) == (503, "late")

        # a ping of its own runs (the worker's pool process writes what the ping carries)
        liveness_stamp_write(hostname, f"{watchdog._nonce}:1")
        watchdog.observe()
        answer = livez(port)
        assert answer is not None
        assert (answer[0], answer[1]["status"]) == (200, "ok")
    finally:
        watchdog.stop()
        stamp.unlink(missing_ok=True)


@pytest.mark.django_db
def test_an_in_process_test_worker_starts_no_watchdog(settings: Any) -> None:
    """Only the `celery worker` program starts it: a watchdog in the test process would end it."""
    from celery.contrib.testing.worker import start_worker as start_test_worker

    assert settings.WORKER_LIVENESS_TIMEOUT_SECONDS > 0
    with start_test_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        assert [t.name for t in threading.enumerate() if t.name.startswith("worker-liv")] == []
