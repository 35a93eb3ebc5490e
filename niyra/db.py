"""Database access from async code.

Django ties a database connection to the thread that used it and returns it (to psycopg's
pool) only when the request finishes. An async view that runs ORM work, then awaits a provider
for seconds, would hold a pooled connection all that time: 500 slow streams would need 500
connections. `db_sync_to_async` runs the ORM work in a thread and hands the connection back as
soon as that work is done, so connections are held only while queries run.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

P = ParamSpec("P")
T = TypeVar("T")


def release_connections() -> None:
    """Return this thread's connections to the pool, unless a transaction is open on them
    (a test's wrapping transaction, or a caller's atomic block: those end where they began).

    A connection found dead (PostgreSQL restarted, failed over, or dropped it) rarely dies
    alone: the pool's idle ones are checked at once and the dead ones replaced, so one request
    fails rather than one per pooled connection (tests/faults/test_db_faults.py)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            lost = getattr(connection.connection, "closed", False) is True
            connection.close()
            pool = getattr(connection, "pool", None)
            if lost and pool is not None:
                pool.check()


def db_sync_to_async(func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(func)
    def run_and_release(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        finally:
            release_connections()

    return sync_to_async(run_and_release)
