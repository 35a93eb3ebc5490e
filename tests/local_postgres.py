"""pytest plugin (`-p tests.local_postgres` in pyproject.toml): the database of a test run.

DATABASE_URL set (CI: the system server) -> the tests use that server. Unset -> this plugin
starts the embedded PostgreSQL (scripts/local_postgres.py) before pytest-django loads the settings,
and stops it when the session ends, failed or interrupted. Concurrent runs each lock their own
data directory under var/, so neither drops the other's test database; with --reuse-db each
directory keeps its migrated test database between runs. xdist workers inherit DATABASE_URL.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Generator
from urllib.parse import urlsplit

import pytest

from scripts.local_postgres import VAR_DIR, LocalPostgres, start_first_free

TEST_DATA_DIRS = [VAR_DIR / "postgres-test", *(VAR_DIR / f"postgres-test-{n}" for n in range(2, 5))]
_server_key = pytest.StashKey[LocalPostgres | None]()


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Generator[None]:
    # A wrapper runs before every plain implementation, pytest-django's (which loads the
    # settings) included, whatever order the plugins were registered in.
    server = None
    if not os.environ.get("DATABASE_URL"):
        server = start_first_free(TEST_DATA_DIRS)
        atexit.register(server.stop)  # if the run ends before pytest's own clean-up is set up
        early_config.add_cleanup(server.stop)
        os.environ["DATABASE_URL"] = server.url
    early_config.stash[_server_key] = server
    return (yield)


def pytest_report_header(config: pytest.Config) -> str:
    server = config.stash.get(_server_key, None)
    if server is not None:
        return f"niyra: database=embedded PostgreSQL in {server.data_dir} (started for this run)"
    url = urlsplit(os.environ.get("DATABASE_URL", ""))
    return f"niyra: database=PostgreSQL at {url.hostname}:{url.port or 5432}{url.path} (DATABASE_URL)"
