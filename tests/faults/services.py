"""Processes the Redis and worker fault tests own: a private `redis-server` they can really shut
down and start again on the same port, real `celery worker` subprocesses on it, and the
in-process Celery app and cache pointed at it for the duration of a test.

The shared Redis (the one in REDIS_URL, or 6379) is never touched: every test here starts its
own server on a free port and stops it in teardown. Subprocesses get the settings a deployment
would (`niyra.settings.production`) from the environment: the test database, the private Redis,
the sandbox as providers and OAuth server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from sandbox import SandboxServer

BASE_DIR = Path(settings.BASE_DIR)
START_TIMEOUT_SECONDS = 30.0  # a bound for waiting (two shared cores), never a speed assertion


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- A private Redis --------------------------------------------------------------------------


class RedisServer:
    """A `redis-server` of this test alone, without persistence (a restart loses every queued
    message, as a Redis restarted without AOF would), on a fixed port so it can come back there."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _command(self, *parts: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall((" ".join(parts) + "\r\n").encode())
            return sock.recv(64)

    def ping(self) -> bool:
        try:
            return self._command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        assert self.process is None or self.process.poll() is not None, "already running"
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_for(self.ping, timeout=START_TIMEOUT_SECONDS, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        """Really shut it down (SHUTDOWN NOSAVE: the port closes, the data is gone)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self._command("SHUTDOWN", "NOSAVE")
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


# --- The in-process app on the private Redis --------------------------------------------------


def _reset_celery_connections() -> None:
    """Forget every broker connection this process holds. The app's pools are entries of kombu's
    process-wide registry (keyed by broker URL): closing one and leaving it registered would make
    the next publish to that broker, in any later test, fail with "Acquire on closed pool"."""
    from kombu import pools

    from niyra.celery import app

    pools.reset()  # closes every registered pool and empties the registry
    app._pool = None
    app.amqp._producer_pool = None


@contextlib.contextmanager
def in_process_broker(url: str) -> Iterator[None]:
    """Point this process's Celery app (what `apply_async` publishes through) at `url`."""
    from niyra.celery import app

    previous = app.conf.broker_url
    _reset_celery_connections()
    app.conf.broker_url = url
    try:
        yield
    finally:
        _reset_celery_connections()
        app.conf.broker_url = previous


def redis_cache_settings(url: str) -> dict[str, Any]:
    """CACHES for `url`, as production builds them from REDIS_URL (its OPTIONS kept)."""
    default = dict(settings.CACHES["default"])
    if not default["BACKEND"].endswith("RedisCache"):
        default = {"BACKEND": "django.core.cache.backends.redis.RedisCache"}
    return {"default": {**default, "LOCATION": url}}


# --- Subprocesses with deployment settings -----------------------------------------------------


def current_database_url() -> str:
    """The URL of the database this test runs on (pytest-django's `test_<name>`, with any xdist
    suffix): subprocesses must see the rows the test commits."""
    db = connection.settings_dict
    assert db["ENGINE"].endswith("postgresql"), "subprocess fault tests need PostgreSQL"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or db.get("OPTIONS", {}).get("host") or "127.0.0.1"
    port = db.get("PORT") or 5432
    if host.startswith("/"):  # a Unix socket directory: the embedded server (tests/local_postgres.py)
        return f"postgres://{user}@/{db['NAME']}?host={quote(host)}"
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


def integration_env(integrations: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """OAUTH_INTEGRATION_NAMES and OAUTH_<NAME>_* for the given OAUTH_INTEGRATIONS entries."""
    env = {"OAUTH_INTEGRATION_NAMES": ",".join(integrations)}
    for name, entry in integrations.items():
        prefix = "OAUTH_" + name.upper().replace("-", "_") + "_"
        for field in ("client_id", "client_secret", "authorize_url", "token_url", "revoke_url", "label"):
            if entry.get(field):
                env[prefix + field.upper()] = str(entry[field])
        env[prefix + "SCOPES"] = " ".join(entry.get("scopes") or ())
    return env


def deployment_env(*, redis_url: str, sandbox: SandboxServer, **extra: str) -> dict[str, str]:
    """The environment of a web/worker process of this test: production settings (DEBUG off),
    the test database, the private Redis as cache and broker, the sandbox as providers and the
    test's OAuth integrations. Secrets (SECRET_KEY, the keyring) are the test process's own, so
    both sides can read what the other encrypted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAUTH_", "CELERY_", "PYTEST_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="niyra.settings.production",
        NIYRA_READ_DOTENV="0",
        DEBUG="False",
        DATABASE_URL=current_database_url(),
        REDIS_URL=redis_url,
        DB_POOL="False",  # one connection per process is plenty here
        ANTHROPIC_BASE_URL=sandbox.anthropic_base_url,
        OPENAI_BASE_URL=sandbox.openai_base_url,
        PYTHONPATH=str(BASE_DIR),
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="INFO",
    )
    env.update(integration_env(getattr(settings, "OAUTH_INTEGRATIONS", {}) or {}))
    env.update(extra)
    return env


# `celery -A niyra worker`, with test-only broker transport options (a short visibility timeout,
# so a message of a killed worker comes back in seconds rather than the production hour).
_WORKER_MAIN = """
import json, os, sys
from niyra.celery import app
app.conf.broker_transport_options = {
    **(app.conf.broker_transport_options or {}),
    **json.loads(os.environ["NIYRA_TEST_TRANSPORT_OPTIONS"]),
}
app.worker_main(sys.argv[1:])
"""


class ProcessGroup:
    """What the subprocesses of these tests share: each runs in a process group of its own (so
    it can be killed, children and all, without touching anyone else), logs to `log_path`, and
    takes signals on its main process, as Fly sends its kill signal to the machine's main one."""

    name: str
    log_path: Path
    process: subprocess.Popen[bytes] | None
    STOP_SECONDS = 10.0  # how long `stop` waits after SIGTERM before it kills

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        """Send `signum` to the main process only."""
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9 of the whole group: no graceful stop, no ack, no chance to tidy up."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        """How teardown asks it to stop."""
        self.signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=self.STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()


class Worker(ProcessGroup):
    """A real `celery worker` subprocess (solo pool by default: the task runs in the process we
    kill; `pool="prefork"` for production's shape, the tasks in child processes)."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        logdir: Path,
        transport_options: Mapping[str, Any],
        *,
        pool: str = "solo",
        concurrency: int = 1,
    ) -> None:
        self.name = name
        self.log_path = logdir / f"worker-{name}.log"
        argv = [sys.executable, "-c", _WORKER_MAIN, "worker", f"--pool={pool}", f"--concurrency={concurrency}"]
        argv += ["--loglevel=INFO", f"--hostname={name}@%h"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.process = subprocess.Popen(
            argv,
            env={**env, "NIYRA_TEST_TRANSPORT_OPTIONS": json.dumps(dict(transport_options))},
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=BASE_DIR,
            start_new_session=True,  # its own process group: kill it without touching anyone else
        )

    def wait_ready(self) -> Worker:
        def ready() -> bool:
            assert self.process.poll() is None, f"worker {self.name} exited:\n{self.log()[-3000:]}"
            return " ready." in self.log()

        wait_for(ready, timeout=START_TIMEOUT_SECONDS, what=f"worker {self.name} to be ready", interval=0.1)
        return self

    def terminate(self) -> None:
        """Teardown stops the pool's children too (`signal` reaches the main process only, as
        Fly's kill signal does: the children are the worker's to stop)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[Callable[..., list[Worker]]]:
    """`start_worker(env, "a", "b", transport_options=...)`: workers started side by side (their
    start-up is the slow part), returned once all are ready, stopped in teardown."""
    started: list[Worker] = []

    def start(
        env: Mapping[str, str],
        *names: str,
        transport_options: Mapping[str, Any] | None = None,
        pool: str = "solo",
        concurrency: int = 1,
    ) -> list[Worker]:
        workers = [
            Worker(name, env, tmp_path, transport_options or {}, pool=pool, concurrency=concurrency) for name in names
        ]
        started.extend(workers)
        return [worker.wait_ready() for worker in workers]

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def refused_connection(exc: BaseException) -> bool:
    """Whether a client's connection error was a refusal: the only failure that is safe to send
    to another server, since the request never reached one."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


# --- The production web command ---------------------------------------------------------------


class WebServer(ProcessGroup):
    """The production web command (gunicorn with uvicorn workers, `gunicorn.conf.py`, as fly.toml
    runs it) as a subprocess on a fixed loopback port, so it can be stopped and started again
    there, as a deploy replaces a machine. Signals go to the gunicorn master only, as Fly sends
    its kill signal to the machine's main process."""

    STOP_SECONDS = 60.0  # a graceful stop lets calls in flight finish

    def __init__(self, name: str, env: Mapping[str, str], logdir: Path, *, workers: int = 1) -> None:
        self.name = name
        self.env = dict(env)
        self.workers = workers
        self.port = free_port()
        self.log_path = logdir / f"web-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebServer:
        assert self.process is None or self.process.poll() is not None, "already running"
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        argv = [gunicorn, "niyra.asgi:application", "--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(
            argv,
            env={**self.env, "WEB_CONCURRENCY": str(self.workers)},
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=BASE_DIR,
            start_new_session=True,  # its own process group: kill it (and its workers) alone
        )
        return self

    def ready(self) -> bool:
        running = self.process is not None and self.process.poll() is None
        assert running, f"web {self.name} exited:\n{self.log()[-3000:]}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def wait_ready(self) -> WebServer:
        what = f"web {self.name} to answer /healthz"
        wait_for(self.ready, timeout=START_TIMEOUT_SECONDS * 2, what=what, interval=0.1)
        return self


@pytest.fixture
def start_web(tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    """`start_web(env, "a", workers=1)`: a production web server, ready, stopped in teardown."""
    started: list[WebServer] = []

    def start(env: Mapping[str, str], name: str, *, workers: int = 1) -> WebServer:
        server = WebServer(name, env, tmp_path, workers=workers)
        started.append(server)
        return server.start().wait_ready()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


# --- The production beat command --------------------------------------------------------------


class Beat(ProcessGroup):
    """The production beat command (`celery -A niyra beat`, as fly.toml runs it) as a subprocess,
    on a machine of its own: the schedule file Celery's default scheduler keeps is a fresh one in
    the test's folder, as a deploy gives the new machine an empty disk. Signals go to the beat
    process only, as Fly sends its kill signal to the machine's main process."""

    def __init__(self, name: str, env: Mapping[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"beat-{name}.log"
        argv = [sys.executable, "-m", "celery", "-A", "niyra", "beat", "--loglevel", "INFO"]
        argv += ["--schedule", str(logdir / f"beat-{name}-schedule")]
        self.process = subprocess.Popen(
            argv,
            env=dict(env),
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=BASE_DIR,
            start_new_session=True,
        )

    def wait_started(self) -> float:
        """Wait until beat says it is starting (its scheduler is set up right after); returns when
        that was seen (time.monotonic())."""

        def started() -> bool:
            assert self.process.poll() is None, f"beat {self.name} exited:\n{self.log()[-3000:]}"
            return "beat: Starting..." in self.log()

        wait_for(started, timeout=START_TIMEOUT_SECONDS, what=f"beat {self.name} to start", interval=0.05)
        return time.monotonic()


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[..., Beat]]:
    """`start_beat(env, "a")`: a beat process (not waited for: see `Beat.wait_started`), stopped
    in teardown."""
    started: list[Beat] = []

    def start(env: Mapping[str, str], name: str) -> Beat:
        beat = Beat(name, env, tmp_path)
        started.append(beat)
        return beat

    try:
        yield start
    finally:
        for beat in started:
            beat.stop()
