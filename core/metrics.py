"""Prometheus metrics (prometheus-client): the exporter, and the base floor's own metrics.

Each app declares its metrics in its own `metrics.py`, with prometheus-client's classes, names
starting `niyra_` and label values from bounded sets only (a catalogue id, a status, an outcome
code: never a key, a token, an email or anything a user typed). docs/observability.md lists them.

Processes. A web server runs several worker processes and a Celery worker a pool of them, so
the figures are kept in prometheus-client's multi-process mode: each process writes its own
files under PROMETHEUS_MULTIPROC_DIR and the root of the process tree (gunicorn's master, the
Celery worker's main process) serves their sum on METRICS_LISTEN, a private port fly.toml's
[metrics] declares, never the public one. A process with no PROMETHEUS_MULTIPROC_DIR (the
development server, a test) keeps its figures in memory and serves them itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets (seconds). Niyra's own share of a call is milliseconds: finer at the bottom.
ADDED_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
REQUEST_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TASK_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR_ENV))


if multiprocess_mode():
    # A one-off process (a management command on a machine) finds the directory ready.
    os.makedirs(os.environ[MULTIPROCESS_DIR_ENV], exist_ok=True)


def enabled() -> bool:
    """Whether figures are recorded (METRICS_ENABLED). The recording helpers of each app ask."""
    return bool(settings.METRICS_ENABLED)


def multiprocess_dir_reset() -> None:
    """Empty the multi-process directory: the root of a process tree calls it before it starts
    its children, so figures of an earlier run of the same machine are not counted again.

    The caller's own files stay: prometheus-client keeps writing to the files it has open, and a
    Celery worker's main process has opened its own (the apps' unlabelled metrics, at import)
    before it gets the chance to call this."""
    path = os.environ[MULTIPROCESS_DIR_ENV]
    os.makedirs(path, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for entry in os.scandir(path):
        if not entry.name.endswith(own):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def process_dead(pid: int) -> None:
    """A child process ended: its live gauges (pool connections) stop counting."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid)


class _RegistryView(Collector):
    """The metrics of another registry, served beside the exporter's own collectors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def exporter_registry(collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """What the exporter serves: every process's figures (multi-process mode) or this process's,
    and `collectors` read at scrape time (the queue's length, say)."""
    registry = CollectorRegistry(auto_describe=True)
    if multiprocess_mode():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_RegistryView(REGISTRY))
    for collector in collectors:
        registry.register(collector)
    return registry


def exporter_start(listen: str, collectors: Iterable[Collector] = ()) -> tuple[WSGIServer, threading.Thread] | None:
    """Serve GET /metrics on `listen` ("host:port") from a daemon thread of this process. An
    address that is malformed or taken is one ERROR line, not a process that won't serve its
    users (the metrics-absent alert shows it): None then."""
    host, _, port = listen.rpartition(":")
    try:
        server, thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=exporter_registry(collectors))
    except (OSError, ValueError, OverflowError) as exc:
        logger.error("metrics: cannot serve on %r (%s); set METRICS_LISTEN to a free host:port", listen, exc)
        return None
    logger.info("metrics served on %s", listen)
    return server, thread


# --- The base floor's metrics -----------------------------------------------------------------

# Every HTTP request the web process answered, by area (the part of Niyra it reached: gateway,
# api, dashboard, admin, static, health, other), method and status code.
HTTP_REQUESTS = Counter(
    "niyra_http_requests_total", "HTTP requests answered, by area, method and status.", ["area", "method", "status"]
)
HTTP_REQUEST_SECONDS = Histogram(
    "niyra_http_request_duration_seconds",
    "Time from a request's arrival to its last byte sent, by area.",
    ["area"],
    buckets=REQUEST_LATENCY_BUCKETS,
)
# Database connection pools of each process (Django's, and the gateway's own), summed over the
# live processes: connections open and in use, idle, the pool's maximum, and requests waiting.
DB_POOL_CONNECTIONS = Gauge(
    "niyra_db_pool_connections",
    "Database pool connections by pool and state (in_use, idle, max), summed over live processes.",
    ["pool", "state"],
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "niyra_db_pool_requests_waiting",
    "Requests waiting for a database pool connection, summed over live processes.",
    ["pool"],
    multiprocess_mode="livesum",
)


def db_pool_observe(pool: str, stats: dict[str, Any]) -> None:
    """Record a psycopg pool's `get_stats()`."""
    size, idle = int(stats.get("pool_size", 0)), int(stats.get("pool_available", 0))
    DB_POOL_CONNECTIONS.labels(pool, "in_use").set(max(0, size - idle))
    DB_POOL_CONNECTIONS.labels(pool, "idle").set(idle)
    DB_POOL_CONNECTIONS.labels(pool, "max").set(int(stats.get("pool_max", 0)))
    DB_POOL_WAITING.labels(pool).set(int(stats.get("requests_waiting", 0)))
