"""Every Celery task run, observed: one log line, the task metrics, and the request id of whoever
queued it. niyra/celery.py installs it (`task_observability_install(app)`) through Celery's
signals, so each part runs in the process that sees the event:

* Whoever queues a task (a web request, a task queuing another): `before_task_publish` puts the
  request id of the current LogContext in the message's headers.
* The process that runs it (a pool process; the caller itself for `task.apply()`): from
  `task_prerun` to `task_postrun` the task runs in a LogContext of its own (that request id, else
  a new one, the task's id and name), so every record it logs carries them. At `task_postrun` it
  logs one line (logger "niyra.tasks": outcome, duration, retries) and counts the run; in a
  worker, it then records the process's Django pool.
* The worker's main process: the messages it drops without running them (revoked or expired,
  unknown, malformed) are counted there; it serves the pool's figures (core.metrics) and, read
  at scrape time, the length of the queues it consumes.

Task labels are registered task names (else "other"), so a message naming anything cannot add
series. With METRICS_ENABLED off nothing is recorded or served; the log lines stay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery, Task, states
from celery.app.trace import LOG_RETRY, LOG_SUCCESS
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    before_task_publish,
    celeryd_init,
    task_postrun,
    task_prerun,
    task_rejected,
    task_revoked,
    task_unknown,
    worker_init,
    worker_process_shutdown,
    worker_ready,
)
from celery.utils.nodenames import worker_direct
from celery.utils.saferepr import saferepr
from django.conf import settings
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core import metrics
from core.dbpool import pools_observe
from core.logging import LogContext, log_context, log_context_set, request_id_checked, request_id_new

logger = logging.getLogger("niyra.tasks")

REQUEST_ID_HEADER = "niyra_request_id"
OTHER = "other"
OUTCOMES = ("success", "failure", "retry", "rejected", "revoked")

TASKS = Counter(
    "niyra_celery_tasks_total",
    "Celery task runs by task and outcome (success, failure, retry, rejected, revoked).",
    ["task", "outcome"],
)
TASK_SECONDS = Histogram(
    "niyra_celery_task_duration_seconds",
    "Time a Celery task ran (in its pool process), by task.",
    ["task"],
    buckets=metrics.TASK_LATENCY_BUCKETS,
)
QUEUE_LENGTH = "niyra_celery_queue_length"
QUEUE_LENGTH_HELP = "Messages waiting in each queue the worker consumes, read from the broker at scrape time."
QUEUE_LENGTH_TIMEOUT_SECONDS = 1.0  # a scrape must not wait on a broker that doesn't answer

# task_postrun's state -> outcome. IGNORED (the task raised Ignore: replaced, or it handled its
# own state) is logged but not counted. None: an error escaped Celery's tracer (an eager task
# with propagation, an internal error).
_OUTCOME_OF_STATE: dict[str | None, str] = {
    states.SUCCESS: "success",
    states.FAILURE: "failure",
    states.RETRY: "retry",
    states.REJECTED: "rejected",
    states.IGNORED: "ignored",
    None: "failure",
}
# The line each outcome logs. Success and retry keep the words of the lines Celery's tracer logs
# (`celery.app.trace`, now at WARNING: settings.LOGGING), so what greps for them still finds
# them, and core.logging.QuietIdleTicksFilter reads the same arguments.
_LINES: dict[str, tuple[int, str]] = {
    "success": (logging.INFO, LOG_SUCCESS),
    "retry": (logging.WARNING, LOG_RETRY),
    "failure": (logging.ERROR, "Task %(name)s[%(id)s] failed in %(runtime)ss: %(exc)s"),
    "rejected": (logging.WARNING, "Task %(name)s[%(id)s] rejected in %(runtime)ss: %(exc)s"),
    "ignored": (logging.INFO, "Task %(name)s[%(id)s] ignored in %(runtime)ss"),
}


def task_label(app: Celery, name: str | None) -> str:
    return name if name is not None and name in app.tasks else OTHER


def tasks_count(task: str, outcome: str) -> None:
    if metrics.enabled():
        TASKS.labels(task, outcome).inc()


# --- A task's run (the process that runs it) ----------------------------------------------------


@dataclass(slots=True)
class _Run:
    task_id: str
    started: float
    context: contextlib.ExitStack


class _Runs(threading.local):
    """The runs in progress in this thread, innermost last (a task may apply another in-process)."""

    def __init__(self) -> None:
        self.stack: list[_Run] = []


_runs = _Runs()


def _request_id_of(task: Task) -> str:
    headers = task.request.headers or {}
    incoming = request_id_checked(headers.get(REQUEST_ID_HEADER))
    current = log_context()
    return incoming or (current.request_id if current is not None else None) or request_id_new()


def run_started(task: Task, task_id: str) -> None:
    context = contextlib.ExitStack()
    context.enter_context(log_context_set(LogContext(_request_id_of(task), task_id=task_id, task_name=task.name)))
    _runs.stack.append(_Run(task_id, time.monotonic(), context))


def run_finished(app: Celery, task: Task, task_id: str, retval: Any, state: str | None) -> None:
    if not _runs.stack or _runs.stack[-1].task_id != task_id:  # its start was not seen
        return
    run = _runs.stack.pop()
    try:
        seconds = time.monotonic() - run.started
        outcome = _OUTCOME_OF_STATE.get(state, "failure")
        if metrics.enabled():
            label = task_label(app, task.name)
            if outcome in OUTCOMES:
                TASKS.labels(label, outcome).inc()
            TASK_SECONDS.labels(label).observe(seconds)
        _log_run(task, task_id, outcome, seconds, retval)
    finally:
        run.context.close()


def _log_run(task: Task, task_id: str, outcome: str, seconds: float, retval: Any) -> None:
    level, line = _LINES[outcome]
    if not logger.isEnabledFor(level):
        return
    # The arguments of Celery's own lines: the quiet-ticks filter reads `name` and `return_value`.
    args: dict[str, Any] = {"id": task_id, "name": task.name, "runtime": round(seconds, 6)}
    fields: dict[str, Any] = {
        "task_id": task_id,
        "task_name": task.name,
        "outcome": outcome,
        "duration_ms": round(seconds * 1000, 1),
        "retries": task.request.retries or 0,
    }
    if outcome == "success":
        args["return_value"] = saferepr(retval, task.resultrepr_maxsize)
    elif isinstance(retval, BaseException):  # failure, retry, rejected: what was raised
        args["exc"] = str(retval) if outcome == "retry" else saferepr(retval, task.resultrepr_maxsize)
        reason = getattr(retval, "exc", None) if outcome == "retry" else retval
        if isinstance(reason, BaseException):
            fields["exception"] = type(reason).__name__
    else:
        args["exc"] = ""
    logger.log(level, line, args, extra=fields)


# --- Signal receivers ----------------------------------------------------------------------------


def task_observability_install(app: Celery) -> None:
    """Connect the receivers for `app` (settings: METRICS_ENABLED, METRICS_LISTEN)."""

    def publishing(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
        context = log_context()
        if context is not None and headers is not None:
            headers.setdefault(REQUEST_ID_HEADER, context.request_id)

    def prerun(task_id: str = "", task: Task | None = None, **kwargs: Any) -> None:
        if task is not None:
            run_started(task, task_id)

    def postrun(
        task_id: str = "", task: Task | None = None, retval: Any = None, state: str | None = None, **kwargs: Any
    ) -> None:
        if task is not None:
            run_finished(app, task, task_id, retval, state)

    def revoked(sender: Task | None = None, **kwargs: Any) -> None:
        tasks_count(task_label(app, getattr(sender, "name", None)), "revoked")

    def rejected(**kwargs: Any) -> None:
        """A message the worker dropped unrun: an unregistered task name, or not a task at all."""
        tasks_count(OTHER, "rejected")

    before_task_publish.connect(publishing, weak=False)
    task_prerun.connect(prerun, weak=False)
    task_postrun.connect(postrun, weak=False)
    task_revoked.connect(revoked, weak=False)
    task_unknown.connect(rejected, weak=False)
    task_rejected.connect(rejected, weak=False)
    worker_metrics_install(app)


def worker_metrics_install(app: Celery) -> None:
    """The worker's part: the multi-process directory emptied before the pool starts, a pool
    process's Django pool recorded after each task and its live gauges dropped when it ends, and
    GET /metrics on METRICS_LISTEN from the main process once the worker is ready. Only the
    `celery worker` program sends celeryd_init and worker_ready: not the web, beat, or an
    in-process test worker."""

    def pools_after_task(**kwargs: Any) -> None:
        if metrics.enabled():
            pools_observe()

    def worker_starting(**kwargs: Any) -> None:
        # Connected now, after the receiver Django's fixup connects at worker_init, which hands a
        # task's connections back when it ends: the figures are the process's between tasks.
        task_postrun.connect(pools_after_task, weak=False, dispatch_uid="niyra.pools_after_task")

    def starting(instance: Any = None, **kwargs: Any) -> None:
        # celeryd_init: the worker program's first signal, before its pool forks.
        if getattr(instance, "app", None) is app and metrics.enabled() and metrics.multiprocess_mode():
            metrics.multiprocess_dir_reset()

    def ready(sender: Any = None, **kwargs: Any) -> None:
        consumer = sender
        if consumer is None or consumer.app is not app or not metrics.enabled() or not settings.METRICS_LISTEN:
            return
        if isinstance(consumer.pool, PreforkPool) and not metrics.multiprocess_mode():
            logger.warning(
                "metrics: %s is not set, so the figures of the pool's processes are not served",
                metrics.MULTIPROCESS_DIR_ENV,
            )
        own_queue = worker_direct(consumer.hostname).name  # per machine: a label value per deploy
        queues = [queue.name for queue in app.amqp.queues.consume_from.values() if queue.name != own_queue]
        collector = QueueLengthCollector(
            app.conf.broker_url, queues, transport_options=app.conf.broker_transport_options or {}
        )
        metrics.exporter_start(settings.METRICS_LISTEN, collectors=[collector])

    def process_ended(**kwargs: Any) -> None:
        if metrics.enabled():
            metrics.process_dead(os.getpid())

    worker_init.connect(worker_starting, weak=False)
    celeryd_init.connect(starting, weak=False)
    worker_ready.connect(ready, weak=False)
    worker_process_shutdown.connect(process_ended, weak=False)


# --- The queues' length (the worker's main process, at scrape time) ------------------------------


class QueueLengthCollector(Collector):
    """niyra_celery_queue_length{queue}, read from a Redis broker when Prometheus scrapes: the
    lengths of the lists kombu keeps a queue in (one per priority step). Another broker yields no
    sample; so does a broker that fails or doesn't answer within QUEUE_LENGTH_TIMEOUT_SECONDS (the
    series goes absent for that scrape, the scrape itself succeeds)."""

    def __init__(self, broker_url: str, queues: Sequence[str], *, transport_options: Mapping[str, Any]) -> None:
        self.queues = tuple(queues)
        self._client: redis.Redis | None = None
        if urlsplit(broker_url).scheme in ("redis", "rediss"):
            self._client = redis.Redis.from_url(
                broker_url,
                socket_timeout=QUEUE_LENGTH_TIMEOUT_SECONDS,
                socket_connect_timeout=QUEUE_LENGTH_TIMEOUT_SECONDS,
            )
        # Where kombu's Redis transport keeps a queue: the queue's name for priority 0, and
        # "<name><sep><step>" for the other steps, under the global key prefix if one is set.
        prefix = str(transport_options.get("global_keyprefix", ""))
        sep = str(transport_options.get("sep", RedisChannel.sep))
        steps = list(transport_options.get("priority_steps", RedisChannel.priority_steps))
        self._keys = {
            queue: [prefix + (f"{queue}{sep}{step}" if step else queue) for step in steps] for queue in self.queues
        }
        self._failing = False

    def lengths(self) -> dict[str, int]:
        """Each queue's length, or nothing when the broker can't say."""
        if self._client is None or not self.queues:
            return {}
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for keys in self._keys.values():
                    for key in keys:
                        pipe.llen(key)
                sizes = iter(pipe.execute())
        except redis.RedisError as exc:
            if not self._failing:
                logger.warning("metrics: cannot read the queues' length from the broker (%s)", type(exc).__name__)
            self._failing = True
            return {}
        self._failing = False
        return {queue: sum(int(next(sizes)) for _ in keys) for queue, keys in self._keys.items()}

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(QUEUE_LENGTH, QUEUE_LENGTH_HELP, labels=["queue"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(QUEUE_LENGTH, QUEUE_LENGTH_HELP, labels=["queue"])
        for queue, length in self.lengths().items():
            family.add_metric([queue], length)
        yield family
