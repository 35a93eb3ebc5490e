"""Database access from async code.

Django ties a database connection to the thread that used it and returns it (to psycopg's
pool) only when the request finishes. An async view that runs ORM work, then awaits a provider
for seconds, would hold a pooled connection all that time: 500 slow streams would need 500
connections. `db_sync_to_async` runs the ORM work in a thread and hands the connection back as
soon as that work is done, so connections are held only while queries run.

Which thread: under Niyra's ASGI server (`niyra.handlers`, which sets `ON_ASGI_SERVER` for each
request) the work goes to one shared pool of `DB_HOP_THREADS` threads. Django's default for
async views, a "thread-sensitive" hop, gives every request a thread of its own — created and
joined per request — which only matters when a caller's transaction must be seen, and no
transaction spans a hop here (each hop's connection is handed back at its end). Anywhere else
(Django's test Client, a management command calling async code) the hop stays thread-sensitive,
so it runs on the caller's thread and sees the caller's transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

P = ParamSpec("P")
T = TypeVar("T")

ON_ASGI_SERVER: ContextVar[bool] = ContextVar("niyra_on_asgi_server", default=False)


@functools.cache
def _hop_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.DB_HOP_THREADS, thread_name_prefix="niyra-db")


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

    on_caller_thread = sync_to_async(run_and_release)

    @functools.wraps(func)
    async def hop(*args: P.args, **kwargs: P.kwargs) -> T:
        if ON_ASGI_SERVER.get():
            return await sync_to_async(run_and_release, thread_sensitive=False, executor=_hop_executor())(
                *args, **kwargs
            )
        return await on_caller_thread(*args, **kwargs)

    return hop
