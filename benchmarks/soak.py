"""Resource trends of a load run (issue 16, "Soak"), used by `benchmarks/load.py`.

While the main phase runs, a `Sampler` reads every few seconds: the resident memory and open file
descriptors of each process of the stack (the gunicorn master and its workers; the Celery worker
and beat when they run), the run's database connections by process group (each group connects
under its own `application_name`, set through libpq's `PGAPPNAME`), the Celery queue in the run's
Redis db, and the traffic of the interval (latency percentiles, throughput, requests in flight).

`trends` fits a least-squares line to each series after a warm-up (the first fifth of the phase)
and gives its first and last window (a fifth of the remaining samples each); `flatness` applies
the rules below and says which series grew.

What "flat" means, series by series (the rules, below):

* Every run (the CI test asserts these; none depends on the machine's speed):
  - web fds besides its sockets to PostgreSQL and Redis: the floor (lowest sample) of the last
    window is no higher than the first window's, plus `FD_SLACK`. The floor, because what leaks
    never closes, while the sockets of requests in flight and of the upstream pool come and go
    with the traffic of the moment. Set apart: database connections, because a pool grows after
    a burst and keeps what it grew (psycopg_pool gives back one per 10 idle minutes), which is
    not a leak and is judged by the next rule instead; and Redis sockets, because each request
    that reads the cache (here the key-check throttle; also the sign-in throttle, /readyz) gets a
    Django cache client of its own, whose socket closes only when the garbage collector gets to
    it: tens at a time, so a run shorter than the collector's period can't judge them (a soak
    does, below).
  - web database connections idle for more than `STALE_SECONDS`: their floor likewise (plus
    `STALE_SLACK`). A pool hands its connections out in turn, so under load each is used every
    few seconds; a connection taken and never given back, or opened outside a pool, sits idle.
  - web RSS (master + workers): the last window's mean at most `RSS_GROWTH_MB` above the first's.
* Soak runs add: RSS slope per group (web, Celery worker) at most `RSS_SLOPE_MB_PER_MIN`; the
  floor of the web's Redis sockets, and of the worker's fds besides its database connections,
  as for the web's fds; the worker's database connections no higher at the end than at the
  start (plus `WORKER_DB_SLACK`); the queue's floor (it drains between ticks); p50 latency
  steady (`LATENCY_FACTOR`, `LATENCY_SLACK_MS`; p95/p99 are reported, but on a shared machine
  they follow the neighbours); throughput keeping up with the arrival rate.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg
import redis

WARMUP_FRACTION = 0.2  # of the main phase: start-up transients, pools and caches filling
EDGE_FRACTION = 0.2  # first and last window: this share of the samples after the warm-up
CELERY_QUEUE = "celery"  # the one queue (no task routes); `unacked` holds what workers have taken

# A pooled connection is idle only for a moment between uses: the pools hand out their
# connections in turn (psycopg_pool: first in, first out), so under load none stays idle this
# long, while a connection nobody will use again does. (The routing cache's LISTEN connection is
# idle by design, and not counted.)
STALE_SECONDS = 30

FD_SLACK = 8
STALE_SLACK = 1
WORKER_DB_SLACK = 2  # prefork children open their pools on their first task
RSS_GROWTH_MB = 48.0  # web, master + workers, first window to last: loose, for a 60 s run
RSS_SLOPE_MB_PER_MIN = 0.5  # soak: per group of processes (web: master + workers)
QUEUE_SLACK = 2
LATENCY_FACTOR, LATENCY_SLACK_MS = 1.5, 20.0  # p50: the neighbours' load moves p95/p99 more
THROUGHPUT_SHARE = 0.9  # of the arrival rate, in the last window


@dataclass
class Window:
    """The traffic of one sampling interval: latencies of the requests answered as expected,
    and the count of the others."""

    latencies: list[float] = field(default_factory=list)
    failed: int = 0


@dataclass
class Sample:
    t: float  # seconds since the main phase began, at the end of the interval
    seconds: float  # length of the interval
    values: dict[str, float]
    window: Window


def pct_ms(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def process_figures(group: str, root: int, backends: dict[str, int]) -> dict[str, float]:
    """RSS (MB), open fds and TCP sockets to each of `backends` (name: port) of a process and its
    descendants: the sums, and RSS and fds of each process by pid."""
    try:
        parent = psutil.Process(root)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    figures = dict.fromkeys(
        [f"{group}.{name}" for name in ("rss_mb", "fds", "processes", *(f"sockets.{b}" for b in backends))], 0.0
    )
    for process in processes:
        try:
            with process.oneshot():
                rss, fds = process.memory_info().rss / 2**20, process.num_fds()
            ports = [c.raddr.port for c in process.net_connections("tcp") if c.raddr]
        except psutil.NoSuchProcess:  # a worker that exited between the listing and the read
            continue
        figures[f"{group}.rss_mb"] += rss
        figures[f"{group}.fds"] += fds
        figures[f"{group}.processes"] += 1
        figures[f"{group}.pid{process.pid}.rss_mb"] = rss
        figures[f"{group}.pid{process.pid}.fds"] = fds
        for backend, port in backends.items():
            figures[f"{group}.sockets.{backend}"] += ports.count(port)
    return figures


class Sampler:
    """Samples every `interval` seconds until `stop()`; each sample closes the traffic window."""

    def __init__(
        self,
        *,
        processes: dict[str, int],
        dsn: str,
        database: str,
        backends: dict[str, int],
        redis_url: str | None,
        take_window: Callable[[], Window],
        in_flight: Callable[[], int],
        interval: float,
    ) -> None:
        self.processes, self.dsn, self.database, self.redis_url = processes, dsn, database, redis_url
        self.backends = backends  # "postgres" (when over TCP), "redis": their ports
        self.take_window, self.in_flight, self.interval = take_window, in_flight, interval
        self.stopped = asyncio.Event()
        self.samples: list[Sample] = []

    def stop(self) -> None:
        self.stopped.set()

    async def run(self) -> list[Sample]:
        started = last = time.perf_counter()
        with psycopg.connect(self.dsn, autocommit=True, application_name="niyra-load-sampler") as conn:
            broker = redis.Redis.from_url(self.redis_url) if self.redis_url else None
            try:
                while not self.stopped.is_set():
                    with_stop = asyncio.create_task(self.stopped.wait())
                    await asyncio.wait({with_stop}, timeout=max(0.0, last + self.interval - time.perf_counter()))
                    with_stop.cancel()
                    now = time.perf_counter()
                    if self.stopped.is_set() and now - last < self.interval / 2:
                        break  # a stub of an interval (the last requests draining): no sample
                    window, in_flight = self.take_window(), self.in_flight()
                    values = await asyncio.to_thread(self._resources, conn, broker)
                    values |= {"client.in_flight": float(in_flight), "load1": os.getloadavg()[0]}
                    self.samples.append(Sample(t=now - started, seconds=now - last, values=values, window=window))
                    last = now
            finally:
                if broker is not None:
                    broker.close()
        return self.samples

    def _resources(self, conn: psycopg.Connection[Any], broker: redis.Redis | None) -> dict[str, float]:
        values: dict[str, float] = {}
        for group, pid in self.processes.items():
            values |= process_figures(group, pid, self.backends)
        rows = conn.execute(
            "SELECT application_name, count(*), count(*) FILTER (WHERE state <> 'active' "
            "AND state_change < now() - make_interval(secs => %s) AND query NOT ILIKE 'LISTEN %%') "
            "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY application_name",
            (STALE_SECONDS, self.database),
        ).fetchall()
        values["db.connections"] = float(sum(count for _, count, _ in rows))
        for group in [*self.processes, "other"]:
            values[f"db.connections.{group}"] = values[f"db.stale.{group}"] = 0.0
        for name, count, stale in rows:
            group = name.removeprefix("niyra-load-")
            group = group if group in self.processes else "other"
            values[f"db.connections.{group}"] += count
            values[f"db.stale.{group}"] += stale
        for group in self.processes:  # what the database pools explain, set apart (see the rules)
            if f"{group}.fds" in values:
                database = values.get(f"{group}.sockets.postgres", values[f"db.connections.{group}"])
                values[f"{group}.fds_besides_db"] = values[f"{group}.fds"] - database
        if "web.fds_besides_db" in values:
            values["web.fds_besides_db_redis"] = values["web.fds_besides_db"] - values.get("web.sockets.redis", 0.0)
        if broker is not None:
            values["queue.depth"] = float(broker.llen(CELERY_QUEUE))
            values["queue.unacked"] = float(broker.hlen("unacked"))
        return values


# --- trends and rules --------------------------------------------------------------------------


def settled(samples: list[Sample], total: float) -> list[Sample]:
    """The samples after the warm-up."""
    return [sample for sample in samples if sample.t > WARMUP_FRACTION * total]


def edges(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    size = max(1, round(EDGE_FRACTION * len(samples)))
    return samples[:size], samples[-size:]


def latency_series(samples: Iterable[Sample]) -> dict[str, list[tuple[float, float]]]:
    """Per-interval p50/p95/p99 (ms) and throughput (answered per second), as (t, value)."""
    series: dict[str, list[tuple[float, float]]] = {name: [] for name in ("p50_ms", "p95_ms", "p99_ms", "ok_per_s")}
    for sample in samples:
        series["ok_per_s"].append((sample.t, len(sample.window.latencies) / sample.seconds))
        if sample.window.latencies:
            for p in (50, 95, 99):
                series[f"p{p}_ms"].append((sample.t, pct_ms(sample.window.latencies, p)))
    return series


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2 or len({t for t, _ in points}) < 2:
        return None
    return statistics.linear_regression([t / 60 for t, _ in points], [v for _, v in points]).slope


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def trends(samples: list[Sample], total: float) -> dict[str, dict[str, Any]]:
    """Per series after the warm-up: mean and max of the first and last windows, slope per
    minute, min, max. Latency percentiles of the first and last windows pool their requests."""
    after = settled(samples, total)
    if len(after) < 2:
        return {}
    first, last = edges(after)
    result: dict[str, dict[str, Any]] = {}
    names = sorted({name for sample in after for name in sample.values})
    for name in names:
        points = [(s.t, s.values[name]) for s in after if name in s.values]
        if len(points) < len(after) // 2:  # a process that came and went: not a series
            continue
        head = [s.values[name] for s in first if name in s.values]
        tail = [s.values[name] for s in last if name in s.values]
        values = [v for _, v in points]
        result[name] = {
            "first": _rounded(statistics.fmean(head)) if head else None,
            "last": _rounded(statistics.fmean(tail)) if tail else None,
            "first_min": _rounded(min(head)) if head else None,
            "last_min": _rounded(min(tail)) if tail else None,
            "first_max": _rounded(max(head)) if head else None,
            "last_max": _rounded(max(tail)) if tail else None,
            "slope_per_min": _rounded(slope_per_minute(points), 3),
            "min": _rounded(min(values)),
            "max": _rounded(max(values)),
        }
    for name, points in latency_series(after).items():
        if name == "ok_per_s":
            head_rate = sum(len(s.window.latencies) for s in first) / sum(s.seconds for s in first)
            tail_rate = sum(len(s.window.latencies) for s in last) / sum(s.seconds for s in last)
            first_value, last_value = head_rate, tail_rate
        else:
            p = float(name[1:3])
            first_value = pct_ms([v for s in first for v in s.window.latencies], p)
            last_value = pct_ms([v for s in last for v in s.window.latencies], p)
        values = [v for _, v in points]
        result[f"latency.{name}"] = {
            "first": _rounded(first_value, 1),
            "last": _rounded(last_value, 1),
            "slope_per_min": _rounded(slope_per_minute(points), 3),
            "min": _rounded(min(values), 1) if values else None,
            "max": _rounded(max(values), 1) if values else None,
        }
    return result


@dataclass(frozen=True)
class Rule:
    metric: str
    says: str
    holds: Callable[[dict[str, Any]], bool]
    soak_only: bool = False


def _floor_no_higher(slack: float) -> Callable[[dict[str, Any]], bool]:
    return lambda trend: trend["last_min"] <= trend["first_min"] + slack


def _no_higher(slack: float) -> Callable[[dict[str, Any]], bool]:
    return lambda trend: trend["last_max"] <= trend["first_max"] + slack


def _slope_at_most(limit: float) -> Callable[[dict[str, Any]], bool]:
    return lambda trend: trend["slope_per_min"] is not None and trend["slope_per_min"] <= limit


FLOOR, PEAK = "last window's floor <= first window's floor", "last window's max <= first window's max"
RULES = (
    Rule("web.fds_besides_db_redis", f"{FLOOR} + {FD_SLACK}", _floor_no_higher(FD_SLACK)),
    Rule("db.stale.web", f"{FLOOR} + {STALE_SLACK}", _floor_no_higher(STALE_SLACK)),
    Rule(
        "web.rss_mb",
        f"last window's mean <= first window's mean + {RSS_GROWTH_MB:g} MB",
        lambda trend: trend["last"] <= trend["first"] + RSS_GROWTH_MB,
    ),
    Rule("web.rss_mb", f"slope <= {RSS_SLOPE_MB_PER_MIN:g} MB/min", _slope_at_most(RSS_SLOPE_MB_PER_MIN), True),
    Rule("worker.rss_mb", f"slope <= {RSS_SLOPE_MB_PER_MIN:g} MB/min", _slope_at_most(RSS_SLOPE_MB_PER_MIN), True),
    Rule("web.sockets.redis", f"{FLOOR} + {FD_SLACK}", _floor_no_higher(FD_SLACK), True),
    Rule("worker.fds_besides_db", f"{FLOOR} + {FD_SLACK}", _floor_no_higher(FD_SLACK), True),
    Rule("db.connections.worker", f"{PEAK} + {WORKER_DB_SLACK}", _no_higher(WORKER_DB_SLACK), True),
    Rule("queue.depth", f"{FLOOR} + {QUEUE_SLACK}", _floor_no_higher(QUEUE_SLACK), True),
    Rule(
        "latency.p50_ms",
        f"last window <= {LATENCY_FACTOR:g} x first window + {LATENCY_SLACK_MS:g} ms",
        lambda trend: trend["last"] <= LATENCY_FACTOR * trend["first"] + LATENCY_SLACK_MS,
        True,
    ),
)


def flatness(series: dict[str, dict[str, Any]], *, soak: bool, rate: float | None) -> dict[str, dict[str, Any]]:
    """Each rule that applies, with its verdict; a series the run could not sample (too short a
    run) fails its rules."""
    verdicts: dict[str, dict[str, Any]] = {}
    for rule in RULES:
        if rule.soak_only and not soak:
            continue
        name = f"{rule.metric}: {rule.says}"
        trend = series.get(rule.metric)
        ok = trend is not None and all(trend.get(key) is not None for key in ("first", "last")) and rule.holds(trend)
        verdicts[name] = {"ok": ok, "metric": rule.metric, "trend": trend}
    if soak and rate:
        trend = series.get("latency.ok_per_s")
        name = f"latency.ok_per_s: last window >= {THROUGHPUT_SHARE:g} x the arrival rate ({rate:.1f}/s)"
        verdicts[name] = {
            "ok": trend is not None and trend["last"] >= THROUGHPUT_SHARE * rate,
            "metric": "latency.ok_per_s",
            "trend": trend,
        }
    return verdicts


def report_windows(samples: list[Sample], rows: int = 10) -> list[dict[str, Any]]:
    """The phase cut into about `rows` equal windows of whole samples, for the printed table."""
    if not samples:
        return []
    per_row = max(1, math.ceil(len(samples) / rows))
    table = []
    for start in range(0, len(samples), per_row):
        chunk = samples[start : start + per_row]
        latencies = [v for s in chunk for v in s.window.latencies]
        seconds = sum(s.seconds for s in chunk)

        def peak(name: str, chunk: list[Sample] = chunk) -> float | None:
            values = [s.values[name] for s in chunk if name in s.values]
            return max(values) if values else None

        def floor(name: str, chunk: list[Sample] = chunk) -> float | None:
            values = [s.values[name] for s in chunk if name in s.values]
            return min(values) if values else None

        def mean(name: str, chunk: list[Sample] = chunk) -> float | None:
            values = [s.values[name] for s in chunk if name in s.values]
            return statistics.fmean(values) if values else None

        table.append(
            {
                "from_s": round(chunk[0].t - chunk[0].seconds, 1),
                "to_s": round(chunk[-1].t, 1),
                "ok_per_s": round(len(latencies) / seconds, 2),
                "failed": sum(s.window.failed for s in chunk),
                **{f"p{p}_ms": _rounded(pct_ms(latencies, p), 1) for p in (50, 95, 99)},
                "web_rss_mb": _rounded(mean("web.rss_mb"), 1),
                "web_fds_min": floor("web.fds"),
                "web_fds_max": peak("web.fds"),
                "db_connections_max": peak("db.connections"),
                "db_stale_web_max": peak("db.stale.web"),
                "worker_rss_mb": _rounded(mean("worker.rss_mb"), 1),
                "queue_depth_max": peak("queue.depth"),
                "unacked_max": peak("queue.unacked"),
                "in_flight_max": peak("client.in_flight"),
                "load1": _rounded(mean("load1"), 1),
            }
        )
    return table
