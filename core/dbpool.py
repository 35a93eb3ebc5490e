"""Django's connection pool after PostgreSQL lost its connections, and telling that apart.

A connection found dead (PostgreSQL restarted, failed over, or dropped it) rarely dies alone:
when a request fails on one, the pool's idle connections are checked at once and the dead ones
replaced, so one request fails rather than one per pooled connection
(tests/faults/test_db_faults.py). The gateway's own pool does the same (routing.gateway.db).

While PostgreSQL can't be reached at all (stopped, restarting, failing over), a request fails
once its pool gives up waiting for a connection (DB_POOL_TIMEOUT_SECONDS) and is answered with
the catalogue's `503 database_unavailable` and a Retry-After (`core.middleware`, the API's
exception handler, the gateway), not a 500; once the server is back the pool reconnects on its
own (tests/faults/test_postgres_restart.py).
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections

from core.metrics import db_pool_observe

# Sessions ended by a shutdown (fast or immediate: a restart, a failover), and a server that is
# starting up or shutting down ("the database system is starting up").
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or the error it was raised from, as Django wraps psycopg's) says that
    PostgreSQL can't be reached: no connection within a pool's timeout, a connection refused,
    timed out or broken, a session ended by a shutdown. Not a query's own failure (a constraint,
    a deadlock, a statement timeout), which stays a 500."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.OperationalError | psycopg.InterfaceError):
            # Client-side failures (refused, timed out, connection lost, the pool's timeout)
            # carry no SQLSTATE; the server's own say "connection exception" or "shutdown".
            state = seen.sqlstate
            return state is None or state.startswith("08") or state in _SHUTDOWN_STATES
        seen = seen.__cause__
    return False


def pools_check() -> None:
    """Check every initialised pool's idle connections (dropping the dead ones). The pool is
    shared by the alias's connections in every thread, so this may run in any of them. A pool
    not opened yet has nothing to check (and would fail to)."""
    for alias in connections:
        pool = getattr(connections[alias], "pool", None)
        if pool is not None and not pool.closed:
            pool.check()


def pools_observe() -> None:
    """Record each pool's figures (core.metrics), from any thread. A pool that is not open holds
    no connection, whatever its figures say (min_size "in use"): Django makes its pool unopened
    and opens it at the first connection, and Celery closes a prefork child's after each task."""
    for alias in connections:
        pool = getattr(connections[alias], "pool", None)
        if pool is not None:
            stats = pool.get_stats() if not pool.closed else {"pool_max": pool.max_size}
            db_pool_observe("django" if alias == "default" else f"django_{alias}", stats)


def check_pools_after_request_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """`got_request_exception` receiver: check every initialised pool's idle connections.

    Django doesn't hand the exception to its receivers (and sends the signal from a worker
    thread for async views), so any unhandled exception triggers the check: they are rare, and
    a check is one cheap round trip per idle connection."""
    pools_check()
