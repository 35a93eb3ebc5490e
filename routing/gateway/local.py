"""The gateway called from inside Niyra: the dashboard's "Try a message" and `/api/llm/messages`.

They make the same call an SDK makes to `/v1/chat/completions` — the same surface, credential
decision, hold, relay and bill — with the answer captured in memory instead of written to a
socket. Outside the ASGI server (Django's test client, a management command) each call runs on
an event loop of its own, so the pooled resources it opened for that loop are closed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from core import errors
from core.errors import NiyraError
from routing.gateway import db, upstream
from routing.gateway.auth import Caller, caller_for_user
from routing.gateway.core import Exchange, Route
from routing.gateway.errors import Shape
from routing.gateway.ledger import CallReceipt
from routing.gateway.surfaces import universal_chat

UNIVERSAL_PATH = "/v1/chat/completions"


@dataclass(slots=True)
class Answer:
    """What the gateway answered: status, headers (lower-case names) and, unless streamed, body."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    route: Route | None = None  # the call, once closed: its outcome and receipt

    @property
    def receipt(self) -> CallReceipt | None:
        return self.route.receipt if self.route is not None else None

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def key_source(self) -> str:
        return self.headers.get("x-niyra-key-source", "")

    @property
    def call_id(self) -> str:
        return self.headers.get("x-niyra-call-id", "")

    @property
    def credits_charged(self) -> int:
        return int(self.headers.get("x-niyra-credits-charged", "0") or 0)


@contextlib.asynccontextmanager
async def _loop_resources() -> AsyncIterator[None]:
    """Close the pool and HTTP session this call opened, when nothing on this loop had them:
    a loop that lives for one call (Django's sync-to-async bridge) must not leak them."""
    had_pool, had_session = db.pool_open(), upstream.session_open()
    try:
        yield
    finally:
        if not had_session:
            await upstream.session_close()
        if not had_pool:
            await db.pool_close()


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}  # pragma: no cover - never reached


async def _caller(user_id: int) -> Caller:
    caller = await caller_for_user(user_id)
    if caller is None:
        raise NiyraError(errors.NOT_AUTHENTICATED)
    return caller


async def chat(user_id: int, body: dict[str, Any]) -> Answer:
    """A non-streamed call of the universal surface for this user; the answer in full."""
    answer = Answer()
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
        else:
            chunks.append(message.get("body", b""))

    exchange = Exchange(
        method="POST", path=UNIVERSAL_PATH, headers={}, body=orjson.dumps(body), send=send, receive=_never_disconnects
    )
    async with _loop_resources():
        try:
            await universal_chat(exchange, await _caller(user_id))
        except NiyraError as exc:
            if not exchange.started:
                await exchange.error(exc, Shape.OPENAI)
    answer.body = b"".join(chunks)
    answer.route = exchange.route
    return answer


async def chat_stream(user_id: int, body: dict[str, Any]) -> tuple[Answer, AsyncIterator[bytes]]:
    """A streamed call of the universal surface: the status and headers once known, and the
    body's chunks as they come (an error answer arrives as one chunk)."""
    answer = Answer()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
            started.set()
            return
        chunk = message.get("body", b"")
        if chunk:
            queue.put_nowait(chunk)
        if not message.get("more_body", False):
            queue.put_nowait(None)

    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    exchange = Exchange(
        method="POST", path=UNIVERSAL_PATH, headers={}, body=orjson.dumps(body), send=send, receive=receive
    )

    async def run() -> None:
        try:
            async with _loop_resources():
                await universal_chat(exchange, await _caller(user_id))
        except NiyraError as exc:
            if not exchange.started:
                await exchange.error(exc, Shape.OPENAI)
        finally:
            started.set()
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    await started.wait()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
        finally:
            gone.set()  # the reader left: the call settles what was relayed (core's disconnect rule)
            await task
            answer.route = exchange.route

    return answer, chunks()
