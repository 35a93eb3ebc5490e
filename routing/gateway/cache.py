"""The caller cache: token -> caller and user -> caller, in process, dropped the moment
PostgreSQL says the user's routing facts changed.

Triggers on the tokens, users, billing accounts, routing preferences and provider keys tables
(routing/migrations/0006) send ``NOTIFY niyra_routing, '<user id>'`` when a change commits.
Each event loop keeps one connection listening (`Listener`); a notification evicts that user's
entries. Before an entry is served, whatever the listener's socket has already received is
applied first, without waiting (`RoutingCache.usable`), so a change whose notification reached
this process before the request is never missed: a revoked token or a disconnected key is
refused on the very next call, in every worker process.

While the listener is not connected (starting, dropped, reconnecting) nothing would tell us
about a change, so the cache is bypassed — every call reads — and it starts empty again once
the listener is back. A fill that raced an eviction (read before the change, stored after its
notification) is not stored: every eviction bumps an epoch, and a fill stores only if the epoch
is the one it read under. Entries also expire after ``GATEWAY_CALLER_CACHE_SECONDS``, a
backstop for a notification lost with a half-open connection, and the least recently used go
beyond ``GATEWAY_CALLER_CACHE_SIZE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import psycopg
from django.conf import settings
from psycopg import pq

from routing.gateway import db

logger = logging.getLogger(__name__)

CHANNEL = "niyra_routing"
RECONNECT_FIRST_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0

V = TypeVar("V")


class Listener:
    """One connection that LISTENs on ``niyra_routing`` for this event loop, read whenever its
    socket is readable (the loop's reader callback) and on demand (`drain`), never awaited."""

    def __init__(self, on_notify: Callable[[int], None], on_connect: Callable[[], None]) -> None:
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def backend_pid(self) -> int | None:
        """The listening session's server process (tests terminate it to drop the listener)."""
        return self._conn.info.backend_pid if self._conn is not None else None

    def start(self) -> None:
        if self._closed or self._conn is not None or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(**db.connection_kwargs(), autocommit=True)
                await conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error as exc:
                logger.warning("routing cache listener: can't connect (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            if self._closed:
                await conn.close()
                return
            self._conn, self._fd = conn, conn.pgconn.socket
            asyncio.get_running_loop().add_reader(self._fd, self.drain)
            # Anything cached before now was read with nobody listening.
            self._on_connect()
            return

    def drain(self) -> None:
        """Apply every notification already received, without waiting for more. A connection
        found broken is dropped (the cache is bypassed until a new one listens)."""
        conn = self._conn
        if conn is None:
            return
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            self._lost()
            return
        while (notify := pgconn.notifies()) is not None:
            try:
                user_id = int(notify.extra)
            except ValueError:
                continue
            self._on_notify(user_id)
        if pgconn.status != pq.ConnStatus.OK:
            self._lost()

    def _lost(self) -> None:
        logger.warning("routing cache listener: connection lost; bypassing the cache until it is back")
        self._detach()
        self.start()

    def _detach(self) -> None:
        conn, fd = self._conn, self._fd
        self._conn, self._fd = None, None
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
        if conn is not None:
            conn.pgconn.finish()  # the socket is gone or useless: close it without a round trip

    async def close(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        conn = self._conn
        self._detach()
        if conn is not None:
            await conn.close()


@dataclass(slots=True)
class TokenEntry(Generic[V]):
    user_id: int
    token_id: int
    value: V
    expires: float
    stamped_at: datetime | None  # when this process last knew last_used_at was recorded


@dataclass(slots=True)
class _UserEntry(Generic[V]):
    value: V
    expires: float


class RoutingCache(Generic[V]):
    """Token digests and user ids -> cached callers, for one event loop."""

    def __init__(self, *, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.ttl, self._clock = size, ttl, clock
        self._tokens: OrderedDict[str, TokenEntry[V]] = OrderedDict()
        self._users: OrderedDict[int, _UserEntry[V]] = OrderedDict()
        self._user_tokens: dict[int, set[str]] = {}
        self.epoch = 0
        self.listener = Listener(on_notify=self.evict, on_connect=self.clear)

    def usable(self) -> bool:
        """Whether entries may be served and stored now: notifications already received are
        applied first; without a listener, no (and it is started, or restarted)."""
        self.listener.drain()
        if not self.listener.connected:
            self.listener.start()
            return False
        return True

    def token(self, digest: str) -> TokenEntry[V] | None:
        entry = self._tokens.get(digest)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop_token(digest)
            return None
        self._tokens.move_to_end(digest)
        return entry

    def user(self, user_id: int) -> V | None:
        entry = self._users.get(user_id)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._users[user_id]
            return None
        self._users.move_to_end(user_id)
        return entry.value

    def put_token(
        self, digest: str, *, user_id: int, token_id: int, value: V, stamped_at: datetime | None, epoch: int
    ) -> None:
        """Store a fill read under ``epoch`` — unless an eviction came since, or nobody listens."""
        if epoch != self.epoch or not self.listener.connected:
            return
        self._drop_token(digest)
        self._tokens[digest] = TokenEntry(user_id, token_id, value, self._clock() + self.ttl, stamped_at)
        self._user_tokens.setdefault(user_id, set()).add(digest)
        while len(self._tokens) > self.size:
            self._drop_token(next(iter(self._tokens)))

    def put_user(self, user_id: int, value: V, *, epoch: int) -> None:
        if epoch != self.epoch or not self.listener.connected:
            return
        self._users[user_id] = _UserEntry(value, self._clock() + self.ttl)
        self._users.move_to_end(user_id)
        while len(self._users) > self.size:
            self._users.popitem(last=False)

    def evict(self, user_id: int) -> None:
        self.epoch += 1
        self._users.pop(user_id, None)
        for digest in self._user_tokens.pop(user_id, set()):
            self._tokens.pop(digest, None)

    def clear(self) -> None:
        self.epoch += 1
        self._tokens.clear()
        self._users.clear()
        self._user_tokens.clear()

    def __len__(self) -> int:
        return len(self._tokens) + len(self._users)

    def _drop_token(self, digest: str) -> None:
        entry = self._tokens.pop(digest, None)
        if entry is not None:
            digests = self._user_tokens.get(entry.user_id)
            if digests is not None:
                digests.discard(digest)
                if not digests:
                    del self._user_tokens[entry.user_id]


_CACHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RoutingCache[Any]] = weakref.WeakKeyDictionary()


def routing_cache() -> RoutingCache[Any]:
    """This event loop's cache (its listener starts on first use)."""
    loop = asyncio.get_running_loop()
    cache = _CACHES.get(loop)
    if cache is None:
        cache = RoutingCache(size=settings.GATEWAY_CALLER_CACHE_SIZE, ttl=settings.GATEWAY_CALLER_CACHE_SECONDS)
        _CACHES[loop] = cache
    return cache


async def routing_cache_close() -> None:
    """Stop this loop's listener and forget its cache (with the pool: `db.pool_close`)."""
    cache = _CACHES.pop(asyncio.get_running_loop(), None)
    if cache is not None:
        await cache.listener.close()


db.on_pool_close(routing_cache_close)
