"""HTTP, JSON and server-sent-event plumbing the sandbox's Anthropic, OpenAI and OAuth
handlers share: request parsing, the delay / hang / cut / malformed behaviours on the wire,
and the request-log bookkeeping every handler does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any, Final, Literal

from aiohttp import web

from .behaviour import NORMAL, RETRY_AFTER_SECONDS, ApiError, Behaviour, parse_behaviour
from .requestlog import LOGGED_HEADERS, LogRecord, RequestLog, key_id

__all__ = [
    "JSON_CT",
    "MALFORMED_JSON",
    "RATE_HEADERS",
    "Ids",
    "Invalid",
    "Refusal",
    "api_prologue",
    "bearer",
    "delay",
    "dumps",
    "finish",
    "json_response",
    "read_json",
    "send_body",
    "send_stream",
    "sse",
    "str_or_none",
]

dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
JSON_CT: Final = "application/json"
SSE_CT: Final = "text/event-stream; charset=utf-8"
RATE_HEADERS: Final = {"retry-after": str(RETRY_AFTER_SECONDS)}
MALFORMED_JSON: Final = b'{"id": "sandbox-malformed", "type": "message", "content": [{"type": "te'


class Invalid(Exception):
    """A request body the provider would refuse with a 400; each provider shapes the error."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class Ids:
    """Sequential, zero-padded ids (``msg_01…``, ``req_…``), shared by the providers of one app."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def next(self, prefix: str) -> str:
        return f"{prefix}{next(self._counter):020d}"


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event."""
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    hdrs = {"Content-Type": JSON_CT}
    if headers:
        hdrs.update(headers)
    return web.Response(body=body, status=status, headers=hdrs)


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
        return token or None
    return None


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def read_json(request: web.Request) -> Any:
    """The parsed body, or None when it is not JSON (validation then answers as the provider)."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError:
        return None


def finish(record: LogRecord, response: web.StreamResponse) -> web.StreamResponse:
    """Record the status a request was answered with."""
    record.status = response.status
    return response


async def _hang(request: web.Request) -> None:
    """Never answer; return once the client has gone away (or be cancelled)."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise asyncio.CancelledError
        await asyncio.sleep(0.1)


async def delay(request: web.Request, behaviour: Behaviour) -> None:
    """The ``hang`` and ``slow<ms>`` behaviours."""
    if behaviour.hang:
        await _hang(request)
    if behaviour.slow_ms:
        await asyncio.sleep(behaviour.slow_ms / 1000)


Refusal = Literal["no_key"] | ApiError


async def api_prologue(
    log: RequestLog, request: web.Request, api: str, key: str | None, body: Any
) -> tuple[LogRecord, Behaviour, Refusal | None]:
    """Log an API request (its body, model and stream flag, its provider headers), wait out the
    key's delay and say why the provider refuses it, if it does: no key, or the key's error word."""
    is_dict = isinstance(body, dict)
    sent = request.headers
    record = log.add(
        LogRecord(
            api,
            request.path,
            request.method,
            key_id(key) if key else None,
            str_or_none(body.get("model")) if is_dict else None,
            (body.get("stream") is True) if is_dict else None,
            body=body,
            headers={name: sent[name] for name in LOGGED_HEADERS if name in sent},
        )
    )
    if not key:
        return record, NORMAL, "no_key"
    behaviour = parse_behaviour(key)
    if behaviour is NORMAL:
        return record, behaviour, None
    await delay(request, behaviour)
    return record, behaviour, behaviour.api_error()


async def _cut_connection(request: web.Request) -> None:
    """Close the connection without finishing the body (incomplete chunked/content-length)."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def send_body(
    request: web.Request,
    record: LogRecord,
    behaviour: Behaviour,
    payload: bytes,
    headers: dict[str, str],
) -> web.StreamResponse:
    """A non-streaming reply; ``malformed`` sends broken JSON, ``cut`` announces the full
    Content-Length, sends half of the body and drops the connection."""
    if behaviour.malformed:
        return finish(record, json_response(MALFORMED_JSON))
    if not behaviour.cut:
        return finish(record, web.Response(body=payload, headers=headers))
    resp = web.StreamResponse(headers=headers)
    resp.content_length = len(payload)
    await resp.prepare(request)
    await resp.write(payload[: len(payload) // 2])
    await _cut_connection(request)
    return finish(record, resp)


async def send_stream(
    request: web.Request,
    record: LogRecord,
    behaviour: Behaviour,
    headers: dict[str, str],
    *,
    head: bytes,
    deltas: Sequence[bytes],
    tail: bytes,
    malformed: bytes,
) -> web.StreamResponse:
    """An SSE reply: ``head``, one event per output token, then ``tail``.

    ``slowchunk<ms>`` sleeps before each delta; ``cut`` sends half of the deltas and drops the
    connection (no tail); ``malformed`` sends ``malformed`` instead. Otherwise everything after
    the slow deltas goes out in one write.
    """
    resp = web.StreamResponse(headers={**headers, "Content-Type": SSE_CT, "Cache-Control": "no-cache"})
    record.status = 200
    await resp.prepare(request)
    if behaviour.malformed:
        await resp.write(malformed)
        await resp.write_eof()
        return resp
    sent = deltas[: len(deltas) // 2] if behaviour.cut else deltas
    if behaviour.slowchunk_ms:
        if head:  # an empty chunk would end a chunked body
            await resp.write(head)
        for chunk in sent:
            await asyncio.sleep(behaviour.slowchunk_ms / 1000)
            await resp.write(chunk)
        pending = b""
    else:
        pending = head + b"".join(sent)
    if behaviour.cut:
        if pending:
            await resp.write(pending)
        await _cut_connection(request)
        return resp
    await resp.write(pending + tail)
    await resp.write_eof()
    return resp
