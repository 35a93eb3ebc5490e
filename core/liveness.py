"""The worker's liveness watchdog: a worker that no longer consumes ends its process, so that it
is restarted.

A Celery worker can stay up while consuming nothing (after a broker connection was lost, several
Celery/kombu releases have left the consumer connected, or reconnecting, and idle for good). Fly
restarts a machine whose main process exits, never one whose health check fails, and honcho (the
dev stack) only notices a process that ends: so the worker itself must notice, and exit.

How it notices: every WORKER_LIVENESS_INTERVAL_SECONDS the worker's main process queues a ping on
the worker's own queue (`worker_direct`), through the broker like any task. The ping runs like any
task (in a pool process) and writes the token it carries to a stamp file named after the worker,
which the main process reads. When no ping has run for WORKER_LIVENESS_TIMEOUT_SECONDS, whatever
the reason (the consumer wedged, the pool gone, the broker unreachable so no ping could even be
queued), it logs one ERROR line and ends the process with status 1; the pool's processes die with
it (Celery has the kernel SIGKILL them when their parent exits). Beat plays no part in it.

The timeout must outlast a ping queued behind long tasks: with every pool slot busy the ping waits
for a free one, at worst the hard time limit (CELERY_TASK_TIME_LIMIT), plus an interval.

It runs only in a `celery worker` program (the `worker_ready` signal): not in the web or beat
processes, not with eager tasks or an in-process test worker. It stops when a shutdown begins.
With WORKER_LIVENESS_LISTEN set (`0.0.0.0:8081`) it also answers `GET /livez` there: 200 while
pings run, 503 before the first one and once they are late, for a platform check to show.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, shared_task
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from celery.utils.nodenames import worker_direct
from django.conf import settings

logger = logging.getLogger(__name__)

EXIT_STATUS = 1
STAMP_DIR = Path(tempfile.gettempdir())


def liveness_stamp_path(hostname: str) -> Path:
    """Where the pings of the worker named `hostname` leave their token (a local file: the ping
    runs in a pool process, the watchdog in the main one)."""
    digest = hashlib.sha256(hostname.encode()).hexdigest()[:16]
    return STAMP_DIR / f"niyra-worker-liveness-{digest}"


def liveness_stamp_write(hostname: str, token: str) -> None:
    path = liveness_stamp_path(hostname)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(token)
    partial.replace(path)  # atomic: the watchdog never reads half a token


@shared_task(name="core.liveness.ping", bind=True, ignore_result=True)
def liveness_ping(self: Any, *, token: str) -> None:
    """Proves that the worker consumed and ran a task: its watchdog reads the token back."""
    liveness_stamp_write(self.request.hostname, token)


class LivenessWatchdog:
    """Queues pings on the worker's own queue and ends the process when none has run for
    `timeout` seconds. One per worker process, in a daemon thread."""

    def __init__(self, hostname: str, *, interval: float, timeout: float, listen: str = "") -> None:
        self.hostname = hostname
        self.interval = interval
        self.timeout = timeout
        self.listen = listen
        self.queue = worker_direct(hostname)
        self.stamp = liveness_stamp_path(hostname)
        self._nonce = secrets.token_hex(8)  # a stamp left by an earlier process is not ours
        self._sent = 0
        self._seen = ""
        self._started = time.monotonic()
        self._last_ping: float | None = None  # monotonic time the last new ping was seen
        self._publish_failing = False
        self._publisher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None

    # --- state ------------------------------------------------------------------------------

    def observe(self) -> None:
        """Record a ping that ran since the last look."""
        try:
            token = self.stamp.read_text()
        except OSError:
            return
        if token.startswith(self._nonce + ":") and token != self._seen:
            self._seen = token
            self._last_ping = time.monotonic()

    def silence(self) -> float:
        """Seconds since a ping last ran (since the watchdog started, before the first)."""
        return time.monotonic() - (self._last_ping if self._last_ping is not None else self._started)

    def healthy(self) -> bool:
        """A ping ran, and the last one is not late (more than two intervals ago)."""
        return self._last_ping is not None and self.silence() <= max(2 * self.interval, 1.0)

    # --- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.listen:
            self._serve()
        limit = getattr(settings, "CELERY_TASK_TIME_LIMIT", None)
        if limit and self.timeout < limit + self.interval:
            logger.warning(
                "worker liveness: the timeout (%g s) is shorter than the task time limit plus an interval "
                "(%g s): a worker whose every slot runs long tasks may be restarted",
                self.timeout,
                limit + self.interval,
            )
        threading.Thread(target=self._run, name="worker-liveness", daemon=True).start()
        logger.info(
            "worker liveness: a ping every %g s on %s; no ping for %g s ends the worker",
            self.interval,
            self.queue.name,
            self.timeout,
        )

    def disarm(self) -> None:
        """A shutdown began: the consumer stops on purpose, never exit over it."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _run(self) -> None:
        tick = min(1.0, self.interval)
        next_ping = 0.0
        while not self._stopping.is_set():
            self.observe()
            silence = self.silence()
            if silence > self.timeout:
                self._exit(silence)
                return
            now = time.monotonic()
            if now >= next_ping:
                self._ping()
                next_ping = now + self.interval
            self._stopping.wait(tick)

    def _ping(self) -> None:
        """Queue a ping from a thread of its own: a broker that is down or frozen can hold a
        publish for seconds, and the watchdog's clock must not wait for it. While one publish is
        still stuck no other starts; the timeout decides."""
        if self._publisher is not None and self._publisher.is_alive():
            return
        self._sent += 1
        token = f"{self._nonce}:{self._sent}"
        self._publisher = threading.Thread(target=self._publish, args=(token,), name="worker-liveness-ping")
        self._publisher.daemon = True
        self._publisher.start()

    def _publish(self, token: str) -> None:
        try:
            # No retries: the next ping is the retry.
            liveness_ping.apply_async(kwargs={"token": token}, queue=self.queue, expires=self.timeout, retry=False)
        except Exception as exc:  # the broker is unreachable: no ping will run, the timeout decides
            if not self._publish_failing:
                logger.warning("worker liveness: cannot queue a ping (%s)", exc.__class__.__name__)
            self._publish_failing = True
        else:
            self._publish_failing = False

    def _exit(self, silence: float) -> None:
        if self._stopping.is_set():  # a shutdown began meanwhile: let it finish
            return
        logger.error(
            "worker liveness: no ping has run on %s for %.0f s (timeout %g s): the worker is not "
            "consuming; exiting with status %d so that it is restarted",
            self.hostname,
            silence,
            self.timeout,
            EXIT_STATUS,
        )
        for handler in [*logging.getLogger().handlers, *logger.handlers]:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STATUS)  # not sys.exit: the process must end, however wedged its other threads

    # --- GET /livez -------------------------------------------------------------------------

    def _serve(self) -> None:
        host, _, port = self.listen.rpartition(":")
        watchdog = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/livez":
                    self.send_error(404)
                    return
                ok = watchdog.healthy()
                body = json.dumps(
                    {"status": "ok" if ok else "late", "last_ping_seconds_ago": round(watchdog.silence(), 1)}
                ).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # a check every few seconds: no log
                return

        try:
            self._server = http.server.ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)  # noqa: S104
        except (OSError, ValueError, OverflowError) as exc:  # the watchdog still guards the process without it
            logger.error("worker liveness: cannot serve /livez on %s (%s)", self.listen, exc)
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="worker-livez", daemon=True).start()


def worker_liveness_install(app: Celery) -> None:
    """Start the watchdog in each `celery worker` of `app` once it is ready (settings:
    WORKER_LIVENESS_INTERVAL_SECONDS, WORKER_LIVENESS_TIMEOUT_SECONDS (0: off),
    WORKER_LIVENESS_LISTEN), and stop it when the worker begins to shut down."""
    running: list[LivenessWatchdog] = []

    def start(sender: Any = None, **kwargs: Any) -> None:
        consumer = sender
        if consumer is None or consumer.app is not app or running:
            return
        timeout = float(settings.WORKER_LIVENESS_TIMEOUT_SECONDS)
        if timeout <= 0:
            return
        watchdog = LivenessWatchdog(
            consumer.hostname,
            interval=float(settings.WORKER_LIVENESS_INTERVAL_SECONDS),
            timeout=timeout,
            listen=settings.WORKER_LIVENESS_LISTEN,
        )
        running.append(watchdog)
        watchdog.start()

    def disarm(sender: Any = None, **kwargs: Any) -> None:
        for watchdog in running:  # in the signal handler: only set a flag
            watchdog.disarm()

    def stop(sender: Any = None, **kwargs: Any) -> None:
        while running:
            running.pop().stop()

    worker_ready.connect(start, weak=False)
    worker_shutting_down.connect(disarm, weak=False)
    worker_shutdown.connect(stop, weak=False)
