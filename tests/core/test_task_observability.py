"""Every task run is observed (core.task_observability): counted by outcome and timed, logged once
as a JSON line with the id of the request that queued it, and, from a real prefork worker, served
on METRICS_LISTEN summed over the pool's processes, with the length of the worker's queue."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Task
from django.conf import settings
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from core.logging import LogContext, log_context_set
from core.task_observability import REQUEST_ID_HEADER, QueueLengthCollector
from core.tasks import echo, heartbeat
from niyra.celery import app
from sandbox import SandboxServer
from tests.faults.services import (
    RedisServer,
    Worker,
    deployment_env,
    free_port,
    in_process_broker,
    private_redis,  # noqa: F401 - fixture
    start_workers,  # noqa: F401 - fixture
    wait_for,
)

SUCCEEDS = "tests.core.observed.succeeds"
FAILS = "tests.core.observed.fails"
RETRIES_ONCE = "tests.core.observed.retries_once"
task_logger = logging.getLogger("tests.core.observed")


@app.task(name=SUCCEEDS)
def succeeds(value: int) -> int:
    task_logger.info("working on %s", value)
    return value


@app.task(name=FAILS)
def fails(message: str) -> None:
    raise ValueError(message)


@app.task(name=RETRIES_ONCE, bind=True, max_retries=1)
def retries_once(self: Task) -> str:
    if not self.request.retries:
        raise self.retry(countdown=0)
    return "done"


def counted(task: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("niyra_celery_tasks_total", {"task": task, "outcome": outcome}) or 0.0


def timed(task: str) -> float:
    return REGISTRY.get_sample_value("niyra_celery_task_duration_seconds_count", {"task": task}) or 0.0


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON lines settings.LOGGING's console handler writes (its filters and formatter)."""
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        handler.setStream(previous)


def task_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "niyra.tasks"]


def published(queue: str) -> Any:
    """The message queued on `queue` (taken off the broker, the queue deleted)."""
    with app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        message = simple.get(timeout=5)
        message.ack()
        simple.queue.delete()
        simple.close()
    return message


# --- In-process runs -----------------------------------------------------------------------------


def test_each_outcome_is_counted_and_timed(log_lines: Callable[[], list[dict[str, Any]]]) -> None:
    before = {
        "ok": counted(SUCCEEDS, "success"),
        "failed": counted(FAILS, "failure"),
        "retried": counted(RETRIES_ONCE, "retry"),
        "retry_ok": counted(RETRIES_ONCE, "success"),
    }
    timed_before = (timed(SUCCEEDS), timed(FAILS), timed(RETRIES_ONCE))

    assert succeeds.apply(args=(3,)).get() == 3
    assert fails.apply(args=("no",)).state == "FAILURE"
    assert retries_once.apply().get() == "done"  # a retry, then a success

    assert counted(SUCCEEDS, "success") == before["ok"] + 1
    assert counted(FAILS, "failure") == before["failed"] + 1
    assert counted(RETRIES_ONCE, "retry") == before["retried"] + 1
    assert counted(RETRIES_ONCE, "success") == before["retry_ok"] + 1
    assert (timed(SUCCEEDS), timed(FAILS), timed(RETRIES_ONCE)) == tuple(
        n + added for n, added in zip(timed_before, (1, 1, 2), strict=True)
    )
    lines = task_lines(log_lines())
    assert [(line["task_name"], line["outcome"], line["level"], line["retries"]) for line in lines] == [
        (SUCCEEDS, "success", "INFO", 0),
        (FAILS, "failure", "ERROR", 0),
        (RETRIES_ONCE, "retry", "WARNING", 0),
        (RETRIES_ONCE, "success", "INFO", 1),
    ]
    assert all(line["duration_ms"] >= 0 for line in lines)
    assert lines[0]["message"].startswith(f"Task {SUCCEEDS}[") and lines[0]["message"].endswith(": 3")


def test_the_task_runs_in_the_request_id_of_whoever_queued_it(
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    # Given a task queued while a request is served
    queue = f"test-observed-{uuid.uuid4().hex[:8]}"
    with log_context_set(LogContext(request_id="req-queued-by-a-web-request")):
        sent = succeeds.apply_async(args=(7,), queue=queue)
    message = published(queue)
    assert message.headers[REQUEST_ID_HEADER] == "req-queued-by-a-web-request"

    # When a worker runs it (with the message's headers, outside that request)
    succeeds.apply(args=(7,), task_id=message.headers["id"], headers=message.headers)

    # Then its line and every record it logged carry the request id and the task
    (line,) = task_lines(log_lines())
    assert (line["request_id"], line["task_id"], line["outcome"]) == ("req-queued-by-a-web-request", sent.id, "success")
    (own,) = [line for line in log_lines() if line["logger"] == "tests.core.observed"]
    assert (own["request_id"], own["task_id"], own["task_name"]) == ("req-queued-by-a-web-request", sent.id, SUCCEEDS)


def test_a_task_queued_outside_a_request_gets_a_request_id_of_its_own(
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    queue = f"test-observed-{uuid.uuid4().hex[:8]}"
    succeeds.apply_async(args=(1,), queue=queue)
    message = published(queue)
    assert REQUEST_ID_HEADER not in message.headers

    succeeds.apply(args=(1,), headers=message.headers)
    succeeds.apply(args=(2,))

    first, second = task_lines(log_lines())
    assert len(first["request_id"]) >= 16 and first["request_id"] != second["request_id"]


def test_a_failing_task_logs_error_and_no_secret_from_its_exception(
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    canary = "sk-ant-api03-" + secrets.token_hex(16)

    fails.apply(args=(f"the provider refused {canary}",))

    lines = log_lines()
    (line,) = task_lines(lines)
    assert (line["level"], line["outcome"], line["exception"]) == ("ERROR", "failure", "ValueError")
    assert "[redacted]" in line["message"]
    # Celery's own failure line (the traceback, its `data`) went through the same redaction
    assert any(other["logger"] == "celery.app.trace" and other["level"] == "ERROR" for other in lines)
    assert canary not in json.dumps(lines)


def test_an_idle_tick_is_counted_but_logs_no_line(log_lines: Callable[[], list[dict[str, Any]]]) -> None:
    before = counted("core.tasks.heartbeat", "success")

    heartbeat.apply()

    assert counted("core.tasks.heartbeat", "success") == before + 1
    assert task_lines(log_lines()) == []


def test_with_metrics_off_nothing_is_recorded_and_the_line_stays(
    settings: Any, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    settings.METRICS_ENABLED = False
    before = (counted(SUCCEEDS, "success"), timed(SUCCEEDS))

    succeeds.apply(args=(5,))

    assert (counted(SUCCEEDS, "success"), timed(SUCCEEDS)) == before
    assert [line["outcome"] for line in task_lines(log_lines())] == ["success"]


# --- The queues' length ----------------------------------------------------------------------------


@pytest.mark.redis
def test_the_queue_length_counts_every_priority_list_kombu_keeps() -> None:
    queue = f"test-observed-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        for priority in (None, 9, 0):
            app.send_task("tests.core.observed.never_run", queue=queue, priority=priority)
        collector = QueueLengthCollector(
            settings.CELERY_BROKER_URL, [queue], transport_options=app.conf.broker_transport_options
        )

        assert collector.lengths() == {queue: 3}
        (family,) = collector.collect()
        assert [(s.labels, s.value) for s in family.samples] == [({"queue": queue}, 3.0)]
    finally:
        client.delete(*client.keys(f"*{queue}*"))


def test_a_broker_that_cannot_answer_yields_no_sample_and_no_error() -> None:
    unreachable = QueueLengthCollector(f"redis://127.0.0.1:{free_port()}/0", ["celery"], transport_options={})
    not_redis = QueueLengthCollector("memory://", ["celery"], transport_options={})

    started = time.monotonic()
    families = [*unreachable.collect(), *not_redis.collect()]

    assert [family.samples for family in families] == [[], []]
    assert time.monotonic() - started < 5


# --- A real prefork worker -------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.redis
def test_a_prefork_worker_serves_its_pools_figures_and_logs_each_run_with_the_request_id(
    private_redis: RedisServer,  # noqa: F811
    start_workers: Callable[..., list[Worker]],  # noqa: F811
    sandbox: SandboxServer,
    tmp_path: Path,
) -> None:
    # Given a prefork worker with a multi-process directory that an earlier run left a file in
    figures = tmp_path / "prometheus"
    figures.mkdir()
    (figures / "counter_1.db").write_bytes(b"left by an earlier run")
    port = free_port()
    env = deployment_env(
        redis_url=private_redis.url(),
        sandbox=sandbox,
        PROMETHEUS_MULTIPROC_DIR=str(figures),
        METRICS_LISTEN=f"127.0.0.1:{port}",
        WORKER_LIVENESS_TIMEOUT_SECONDS="0",
        LOG_FORMAT="json",
    )
    (worker,) = start_workers(env, "observed", pool="prefork", concurrency=2)
    assert not (figures / "counter_1.db").exists()

    # When a request queues tasks: three that succeed, one that fails, one that expired before a
    # worker got it, one no worker knows
    with in_process_broker(private_redis.url()), log_context_set(LogContext(request_id="req-from-the-web-1")):
        sent = [echo.delay(value="hi", cache_key=f"observed-{n}") for n in range(3)]
        app.send_task("core.tasks.echo", kwargs={})  # a TypeError in the worker
        echo.apply_async(kwargs={"value": "late", "cache_key": "observed-late"}, expires=timezone.now())
        app.send_task("tests.core.observed.unknown")

    # Then /metrics sums the pool's processes
    def counts() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = scrape(port)
        succeeded = ("niyra_celery_tasks_total", (("outcome", "success"), ("task", "core.tasks.echo")))
        unknown = ("niyra_celery_tasks_total", (("outcome", "rejected"), ("task", "other")))
        done = samples.get(succeeded) == 3 and unknown in samples and len(task_lines_of(worker)) >= 4
        return samples if done else None

    samples = wait_for(counts, timeout=20, what="the worker to run the tasks", interval=0.2)
    assert samples[("niyra_celery_tasks_total", (("outcome", "failure"), ("task", "core.tasks.echo")))] == 1
    assert samples[("niyra_celery_tasks_total", (("outcome", "revoked"), ("task", "core.tasks.echo")))] == 1
    assert samples[("niyra_celery_tasks_total", (("outcome", "rejected"), ("task", "other")))] == 1
    assert samples[("niyra_celery_task_duration_seconds_count", (("task", "core.tasks.echo"),))] == 4
    assert samples[("niyra_celery_queue_length", (("queue", "celery"),))] == 0
    assert [key for key in samples if key[0] == "niyra_celery_queue_length"] == [
        ("niyra_celery_queue_length", (("queue", "celery"),))
    ]
    writers = {int(path.stem.rsplit("_", 1)[1]) for path in figures.glob("histogram_*.db")}
    assert worker.process is not None and writers - {worker.process.pid}, "no pool process recorded a run"

    # And each run is one JSON line carrying the request id of whoever queued it
    lines = {line["task_id"]: line for line in task_lines_of(worker)}
    for result in sent:
        line = lines[result.id]
        assert (line["outcome"], line["level"], line["request_id"]) == ("success", "INFO", "req-from-the-web-1")
    (failed,) = [line for line in lines.values() if line["outcome"] == "failure"]
    assert (failed["level"], failed["exception"], failed["request_id"]) == ("ERROR", "TypeError", "req-from-the-web-1")


def task_lines_of(worker: Worker) -> list[dict[str, Any]]:
    """The worker's JSON lines of task runs (its output also holds Celery's banner)."""
    lines = []
    for text in worker.log().splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(text)
            if isinstance(line, dict) and line.get("logger") == "niyra.tasks":
                lines.append(line)
    return lines
