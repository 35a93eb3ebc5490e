"""The gateway's PostgreSQL: one async psycopg pool per event loop, outside Django's ORM.

The hot path (caller, hold, close) runs `credits.ledger_sql`'s statements and a few reads of
its own on these connections, so a call needs no thread hop. Connections are in autocommit:
each statement is its own transaction, as the money statements expect (`credits.ledger_sql`).

The pool is per event loop (psycopg's async connections belong to the loop that opened them),
opened on first use from Django's own database settings, so the tests' database is the one it
reaches. A connection the server dropped is discarded as it is returned, and the pool's idle
ones are checked at once (they rarely die alone): one call fails, the next gets a live one.
Waiting longer than ``GATEWAY_DB_POOL_TIMEOUT_SECONDS`` for a connection fails the call rather
than letting calls pile up behind a saturated or unreachable database. Either way the caller
gets the catalogue's `503 database_unavailable` with a Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import psycopg
from django.conf import settings
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from core import errors
from core.dbpool import database_unreachable
from core.errors import NiyraError
from credits.ledger_sql import Statement

logger = logging.getLogger(__name__)

# Django's own keys in OPTIONS, which libpq does not know.
_DJANGO_OPTIONS = frozenset({"pool", "server_side_binding", "isolation_level", "assume_role", "cursor_factory"})
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5

# What a caller sees when the database can't be reached in time: 503 with Retry-After.
UNAVAILABLE = errors.DATABASE_UNAVAILABLE


class ConnectionLost(NiyraError):
    """The pooled connection was dead: PostgreSQL restarted, failed over or dropped it. The
    next connection the pool hands out may well work (`ledger.call_close` tries once more)."""

    def __init__(self) -> None:
        error = errors.database_unavailable_error()
        super().__init__(error.spec, headers=error.headers)


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = weakref.WeakKeyDictionary()


def connection_kwargs() -> dict[str, Any]:
    """libpq parameters for Django's default database (read when a pool or listener opens, so a
    test database renamed by the test runner is the one used)."""
    config = settings.DATABASES["default"]
    options = {key: value for key, value in (config.get("OPTIONS") or {}).items() if key not in _DJANGO_OPTIONS}
    params: dict[str, Any] = {
        "dbname": config.get("NAME"),
        "user": config.get("USER"),
        "password": config.get("PASSWORD"),
        "host": config.get("HOST"),
        "port": config.get("PORT"),
    }
    params = {key: value for key, value in params.items() if value not in (None, "")}
    params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT_SECONDS)
    return params | options


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """JSON columns (ledger details and pricing, routed calls' usage) through orjson: every
    close writes some, and the standard library's encoder was a visible share of a call's CPU."""
    set_json_dumps(orjson.dumps, context=conn)
    set_json_loads(orjson.loads, context=conn)


async def gateway_pool() -> AsyncConnectionPool:
    """This event loop's pool, opened on first use (its connections fill in the background)."""
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None or pool.closed:
        pool = AsyncConnectionPool(
            kwargs=connection_kwargs()
            | {"autocommit": True, "prepare_threshold": settings.GATEWAY_DB_PREPARE_THRESHOLD},
            min_size=settings.GATEWAY_DB_POOL_MIN,
            max_size=settings.GATEWAY_DB_POOL_MAX,
            timeout=settings.GATEWAY_DB_POOL_TIMEOUT_SECONDS,
            reconnect_timeout=settings.DB_POOL_RECONNECT_TIMEOUT_SECONDS,
            name="niyra-gateway",
            configure=_configure,
            open=False,
        )
        _POOLS[loop] = pool
        await pool.open(wait=False)
    return pool


def pool_open() -> bool:
    """Whether this event loop has an open pool (a caller that opens one closes it after)."""
    try:
        pool = _POOLS.get(asyncio.get_running_loop())
    except RuntimeError:
        return False
    return pool is not None and not pool.closed


def pool_stats() -> dict[str, int] | None:
    """This event loop's pool figures (psycopg_pool's `get_stats`), if it has an open pool."""
    pool = _POOLS.get(asyncio.get_running_loop())
    return None if pool is None or pool.closed else pool.get_stats()


async def pool_close() -> None:
    """Close this loop's pool, and what lives beside it on the loop (the cache's listener)."""
    loop = asyncio.get_running_loop()
    for hook in _CLOSE_HOOKS:
        await hook()
    pool = _POOLS.pop(loop, None)
    if pool is not None:
        await pool.close()


# What lives and dies with a loop's pool registers here (the caller cache's listener).
_CLOSE_HOOKS: list[Callable[[], Awaitable[None]]] = []


def on_pool_close(hook: Callable[[], Awaitable[None]]) -> None:
    _CLOSE_HOOKS.append(hook)


@contextlib.asynccontextmanager
async def gateway_connection() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection for a few statements. Can't get one in time, or the one we got was
    dead: the catalogue's error (the dead one is discarded; the idle ones are checked)."""
    pool = await gateway_pool()
    try:
        async with pool.connection() as conn:
            yield conn
    except PoolTimeout:
        logger.error("gateway database pool: no connection within %ss", pool.timeout)
        raise errors.database_unavailable_error() from None
    except psycopg.OperationalError as exc:
        # This one is discarded as it goes back; a dead connection rarely dies alone, so the
        # idle ones are checked now, before the next call takes one.
        logger.exception("gateway database connection failed")
        await pool.check()
        if database_unreachable(exc):
            raise ConnectionLost from None
        raise NiyraError(errors.INTERNAL_ERROR) from None  # the statement's own failure


async def fetch_one(statement: Statement) -> tuple[Any, ...] | None:
    """Run one statement (its own transaction) and return its first row."""
    async with gateway_connection() as conn:
        cursor = await conn.execute(statement.sql, statement.params)
        return await cursor.fetchone()


async def execute(statement: Statement) -> None:
    async with gateway_connection() as conn:
        await conn.execute(statement.sql, statement.params)


async def fetch_all(statement: Statement) -> list[tuple[Any, ...]]:
    async with gateway_connection() as conn:
        cursor = await conn.execute(statement.sql, statement.params)
        return await cursor.fetchall()
