"""Machinery for the end-to-end canary (tests/security/test_canary_end_to_end.py).

* `PrivateRedis`: a throw-away `redis-server` whose whole keyspace (cache + broker) the test owns
  and can read back, every key of every type.
* `RecordingProxy`: a loopback TCP proxy between the test's HTTP client and Niyra that keeps the
  raw bytes of both directions: what Niyra sent back is searched exactly as it crossed the wire.
* `CeleryWorker`: a real `celery -A niyra worker` subprocess at loglevel DEBUG. It is started
  with `--include tests.security.canary_support`, and this module, imported in the worker with
  `NIYRA_CANARY_RAW_LOG` set, appends every log record (at DEBUG, from every logger, before
  any handler's redaction filter) and every message the worker publishes to that file.
* `Haystack`: every place searched, as labelled byte strings, and the search itself: a needle
  is looked for as plaintext and in the encodings that would hide it from a plain search (hex,
  as `pg_dump` writes bytea, and base64 at each alignment, as the Redis transport stores
  message bodies). Reports name the place, never the secret.

Nothing here is imported by application code; the worker hook does nothing unless the
environment variable is set.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.services import RedisServer, free_port, wait_for

RAW_LOG_ENV = "NIYRA_CANARY_RAW_LOG"
_RECORD_FORMAT = "%(name)s %(levelname)s %(message)s"


# --- The search -------------------------------------------------------------------------------------


def encodings_of(needle: str) -> dict[str, bytes]:
    """The needle as it would appear in a byte stream: plaintext, hex, and base64 at each of the
    three alignments (standard and URL-safe alphabets), trimmed to the characters that depend
    on the needle alone."""
    raw = needle.encode()
    forms = {"plaintext": raw, "hex": raw.hex().encode()}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        start = 4 if shift else 0  # the first quantum mixes in the padding bytes
        end = len(encoded) - (4 if (shift + len(raw)) % 3 else 0)  # so does a partial last one
        core = encoded[start:end]
        forms[f"base64/{shift}"] = core
        forms[f"base64url/{shift}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return forms


@dataclass
class Haystack:
    """Labelled byte strings: everything that left the code, and everything it stored."""

    items: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, where: str, data: bytes | str) -> None:
        self.items.append((where, data.encode("utf-8", "backslashreplace") if isinstance(data, str) else data))

    def places(self, prefix: str) -> list[str]:
        return [where for where, _ in self.items if where.startswith(prefix)]

    def find(self, needle: str, *, only: str = "") -> list[str]:
        """Where the needle occurs: the place, the form it was in, the line and, for a log, the
        logger that wrote it. Never the needle itself."""
        forms = encodings_of(needle)
        found = []
        for where, data in self.items:
            if not where.startswith(only):
                continue
            for form, encoded in forms.items():
                at = data.find(encoded)
                if at >= 0:
                    found.append(f"{where} [{form}, {_locate(data, at)}]")
        return found

    def total_bytes(self) -> int:
        return sum(len(data) for _, data in self.items)


_LOGGER_NAME = re.compile(rb"^(?:RECORD )?([\w.]+) (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) |'name': '([^']*)'")


def _locate(data: bytes, at: int) -> str:
    start, end = data.rfind(b"\n", 0, at) + 1, data.find(b"\n", at)
    line = data[start : end if end >= 0 else len(data)]
    where = "line {}".format(data.count(b"\n", 0, at) + 1)
    logger = _LOGGER_NAME.search(line[:2000])
    if logger:
        where += f", logger {(logger.group(1) or logger.group(2)).decode(errors='replace')!r}"
    return where


def mask(text: str, secrets_: Mapping[str, str]) -> str:
    """`text` with every secret replaced by its name (labels may quote a Redis key, a path...)."""
    for name, secret in secrets_.items():
        text = text.replace(secret, f"<{name}>")
    return text


# --- A private Redis --------------------------------------------------------------------------------


class PrivateRedis(RedisServer):
    """A private `redis-server` (tests/faults/services.py) as a context manager, whose whole
    keyspace the test can read back."""

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def keyspace(self) -> Iterator[tuple[str, bytes]]:
        """(label, bytes) for every key of every type: its name, its contents, and DUMP's bytes."""
        import redis

        client: Any = redis.Redis.from_url(self.url())  # bytes in, bytes out (no decode_responses)
        try:
            for db in range(16):
                client.execute_command("SELECT", db)
                for key in client.scan_iter(count=1000):
                    kind = client.type(key).decode()
                    label = f"redis db{db} key {key.decode('utf-8', 'backslashreplace')!r} ({kind})"
                    parts: list[bytes] = [key]
                    if kind == "string":
                        parts.append(client.get(key) or b"")
                    elif kind == "list":
                        parts.extend(client.lrange(key, 0, -1))
                    elif kind == "hash":
                        for name, value in client.hgetall(key).items():
                            parts.extend((name, value))
                    elif kind == "set":
                        parts.extend(client.smembers(key))
                    elif kind == "zset":
                        parts.extend(member for member, _ in client.zrange(key, 0, -1, withscores=True))
                    elif kind == "stream":
                        for entry_id, entry in client.xrange(key):
                            parts.append(entry_id)
                            for name, value in entry.items():
                                parts.extend((name, value))
                    parts.append(client.dump(key) or b"")  # the serialised value, whatever the type
                    yield label, b"\n".join(parts)
        finally:
            client.close()

    def keys(self) -> list[str]:
        return [label for label, _ in self.keyspace()]


# --- The client <-> Niyra wire ----------------------------------------------------------------------


class RecordingProxy:
    """A loopback TCP proxy that keeps every byte it forwards, per direction."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.to_niyra = bytearray()
        self.from_niyra = bytearray()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True, name="canary-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, self.to_niyra), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.from_niyra), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    record.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


# --- Celery: the test process's publisher, and a real worker ----------------------------------------


class CeleryWorker:
    """`celery -A niyra worker --loglevel=DEBUG` in a subprocess, with the raw-log hook."""

    def __init__(self, *, env: Mapping[str, str], workdir: Path, cwd: Path) -> None:
        self.stdout_path = workdir / "worker.stdout"
        self.stderr_path = workdir / "worker.stderr"
        self.raw_log_path = workdir / "worker.raw-log"
        self._env = {**env, RAW_LOG_ENV: str(self.raw_log_path), "PYTHONUNBUFFERED": "1"}
        self._cwd = cwd
        self.name = f"canary-{os.getpid()}-{free_port()}@localhost"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "niyra",
            "worker",
            "--pool=solo",
            "--loglevel=DEBUG",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            self.name,
            "--include",
            __name__,
        ]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._process = subprocess.Popen(command, env=self._env, cwd=self._cwd, stdout=out, stderr=err)

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.stdout_path, self.stderr_path) if p.exists())

    def raw_log(self) -> str:
        return self.raw_log_path.read_text(errors="replace") if self.raw_log_path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                raise AssertionError(f"the worker exited ({self._process.returncode}):\n{self.output()[-3000:]}")
            return " ready." in self.output()

        wait_for(ready, timeout=timeout, what="the Celery worker to be ready", interval=0.1)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM: reserved messages go back to the queue), then kill if stuck."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)

    def executed(self, task_name: str, outcome: str = "succeeded|retry") -> int:
        """How many times the worker reports having run `task_name` (with one of `outcome`)."""
        return len(re.findall(rf"Task {re.escape(task_name)}\[[0-9a-f-]+\] (?:{outcome})", self.output()))


# --- The hook that runs inside the worker -----------------------------------------------------------

WORKER_LOGGERS = ("", "django", "django.db.backends", "anthropic", "openai", "httpx2", "httpcore2", "celery", "kombu")


class _RawFileHandler(logging.Handler):
    """Writes each record as it was logged (message, traceback, every attribute) to a file."""

    def __init__(self, path: str) -> None:
        super().__init__(level=logging.DEBUG)
        self._file = open(path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - lives with the worker
        self._formatter = logging.Formatter(_RECORD_FORMAT)
        self._write_lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._write_lock:
            self._file.write(text + "\n")
            self._file.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(f"RECORD {self._formatter.format(record)}\nVARS {vars(record)!r}")
        except Exception:  # a broken record must not stop the worker
            self.handleError(record)


def _install_worker_capture(path: str) -> None:
    from celery import signals
    from django.db.backends.base.base import BaseDatabaseWrapper

    handler = _RawFileHandler(path)
    # Every SQL statement and its parameters, logged at DEBUG by django.db.backends.
    BaseDatabaseWrapper.queries_logged = property(lambda self: True)  # type: ignore[assignment,method-assign]

    def attach(**kwargs: Any) -> None:
        """(Re-)attach as the first handler of the root logger and of any logger that does not
        propagate, and open every logger of interest at DEBUG. Logging is (re)configured several
        times while a worker starts (Django's dictConfig, Celery's own setup): run after each."""
        for name in WORKER_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        loggers = [logging.getLogger()] + [
            logger
            for logger in logging.root.manager.loggerDict.values()
            if isinstance(logger, logging.Logger) and not logger.propagate
        ]
        for logger in loggers:
            if handler not in logger.handlers:
                logger.handlers.insert(0, handler)

    def on_publish(body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        handler.write(f"PUBLISH {(body, headers)!r}")

    attach()
    for hook in (signals.after_setup_logger, signals.after_setup_task_logger, signals.celeryd_after_setup):
        hook.connect(attach, weak=False)
    signals.worker_ready.connect(attach, weak=False)
    signals.before_task_publish.connect(on_publish, weak=False)


if os.environ.get(RAW_LOG_ENV):
    _install_worker_capture(os.environ[RAW_LOG_ENV])
