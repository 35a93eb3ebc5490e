"""The sandbox's Anthropic Messages API: ``/anthropic/v1/messages`` (+ ``count_tokens``,
``models``), answered the way the real API answers, errors and SSE events included.

Authentication: ``x-api-key: <key>`` or ``Authorization: Bearer <key>`` (the anthropic 2.x
SDK sends Bearer); any non-empty key is valid unless it carries a behaviour word.

Usage: ``W`` counts the words of ``system`` and of all text content of all messages (text
blocks, and text inside ``tool_result`` blocks). ``input_tokens = W - C``,
``cache_read_input_tokens = C``, ``cache_creation_input_tokens = 0``, ``output_tokens = M``.
As with the real API, ``input_tokens`` excludes cache reads, so
``input_tokens + cache_read_input_tokens == W`` always.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from .behaviour import Behaviour
from .replies import DELTA_TEXT, TEXT_JSON, plan_reply
from .requestlog import LogRecord, RequestLog
from .wire import (
    JSON_CT,
    RATE_HEADERS,
    Ids,
    Invalid,
    Refusal,
    api_prologue,
    bearer,
    dumps,
    finish,
    json_response,
    read_json,
    send_body,
    send_stream,
    sse,
)

__all__ = ["ANTHROPIC_MODELS", "CREDIT_BALANCE_MESSAGE", "AnthropicAPI"]

ANTHROPIC_MODELS: Final = (
    ("claude-opus-4-8", "Claude Opus 4.8"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
    ("claude-fable-5", "Claude Fable 5"),
)
CREDIT_BALANCE_MESSAGE: Final = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)

# -- precomputed payloads --------------------------------------------------------------

_DELTAS: Final = tuple(
    sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
    )
    for t in DELTA_TEXT
)
_BLOCK_START: Final = sse(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
_PING: Final = sse("ping", {"type": "ping"})
_BLOCK_STOP: Final = sse("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP: Final = sse("message_stop", {"type": "message_stop"})

_MESSAGE_TMPL: Final = (
    '{"id":"%s","type":"message","role":"assistant","model":%s,'
    '"content":[{"type":"text","text":%s}],"stop_reason":"%s","stop_sequence":null,'
    '"usage":{"input_tokens":%d,"output_tokens":%d,'
    '"cache_read_input_tokens":%d,"cache_creation_input_tokens":0}}'
)
_START_TMPL: Final = (
    'event: message_start\ndata: {"type":"message_start","message":{"id":"%s",'
    '"type":"message","role":"assistant","model":%s,"content":[],"stop_reason":null,'
    '"stop_sequence":null,"usage":{"input_tokens":%d,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":%d,"output_tokens":1}}}\n\n'
)
_DELTA_TMPL: Final = (
    'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"%s",'
    '"stop_sequence":null},"usage":{"input_tokens":%d,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":%d,"output_tokens":%d}}\n\n'
)
_MALFORMED_SSE: Final = b'event: message_start\ndata: {"type": "message_start", "mess\n\n'

_MODELS_BODY: Final = dumps(
    {
        "data": [
            {"type": "model", "id": i, "display_name": n, "created_at": "2025-01-01T00:00:00Z"}
            for i, n in ANTHROPIC_MODELS
        ],
        "has_more": False,
        "first_id": ANTHROPIC_MODELS[0][0],
        "last_id": ANTHROPIC_MODELS[-1][0],
    }
).encode()


def _error_body(etype: str, message: str) -> bytes:
    return dumps({"type": "error", "error": {"type": etype, "message": message}}).encode()


_NOT_FOUND: Final = _error_body("not_found_error", "Not Found")
_RATE_LIMIT_HEADERS: Final = {
    **RATE_HEADERS,
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "0",
}
# Why a request is refused -> (body, status, extra headers).
_REFUSALS: Final[dict[Refusal, tuple[bytes, int, dict[str, str] | None]]] = {
    "no_key": (_error_body("authentication_error", "x-api-key header is required"), 401, None),
    "invalid": (_error_body("authentication_error", "invalid x-api-key"), 401, None),
    "ratelimit": (
        _error_body(
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per "
            "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see "
            "the response headers for current usage. Please reduce the prompt length or the maximum "
            "tokens requested, or try again later.",
        ),
        429,
        _RATE_LIMIT_HEADERS,
    ),
    "noquota": (_error_body("invalid_request_error", CREDIT_BALANCE_MESSAGE), 400, None),
    "overloaded": (_error_body("overloaded_error", "Overloaded"), 529, None),
    "error": (_error_body("api_error", "Internal server error"), 500, None),
}

# -- body validation -------------------------------------------------------------------


def _blocks_words(content: Any, where: str) -> int:
    if isinstance(content, str):
        return len(content.split())
    if not isinstance(content, list):
        raise Invalid(f"{where}: Input should be a valid string or a list of content blocks")
    words = 0
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise Invalid(f"{where}.{j}: Input should be a content block with a 'type'")
        btype = block["type"]
        if btype == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise Invalid(f"{where}.{j}.text: Field required")
            words += len(text.split())
        elif btype == "tool_result" and "content" in block:
            words += _blocks_words(block["content"], f"{where}.{j}.content")
    return words


def _validate(body: Any) -> tuple[int, int]:
    """(prompt words W >= 1, max_tokens) or raise Invalid."""
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise Invalid("model: Field required")
    if not isinstance(model, str) or not model:
        raise Invalid("model: Input should be a valid string")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise Invalid("max_tokens: Field required")
    if type(max_tokens) is not int:
        raise Invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if messages is None:
        raise Invalid("messages: Field required")
    if not isinstance(messages, list):
        raise Invalid("messages: Input should be a valid list")
    if not messages:
        raise Invalid("messages: at least one message is required")
    words = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        if msg.get("role") not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in msg:
            raise Invalid(f"messages.{i}.content: Field required")
        words += _blocks_words(msg["content"], f"messages.{i}.content")
    system = body.get("system")
    if system is not None:
        words += _blocks_words(system, "system")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Invalid("stream: Input should be a valid boolean")
    return max(words, 1), max_tokens


def _invalid(exc: Invalid) -> web.Response:
    return json_response(_error_body("invalid_request_error", exc.message), 400)


# -- handlers --------------------------------------------------------------------------


class AnthropicAPI:
    """Handlers of the Anthropic routes, logging to one request log."""

    def __init__(self, log: RequestLog, ids: Ids) -> None:
        self.log = log
        self.ids = ids

    async def _prologue(self, request: web.Request, body: Any) -> tuple[LogRecord, Behaviour, web.Response | None]:
        key = request.headers.get("x-api-key") or bearer(request)
        record, behaviour, refusal = await api_prologue(self.log, request, "anthropic", key, body)
        return record, behaviour, None if refusal is None else json_response(*_REFUSALS[refusal])

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, b, early = await self._prologue(request, body)
        if early is not None:
            return finish(record, early)
        try:
            words, max_tokens = _validate(body)
        except Invalid as exc:
            return finish(record, _invalid(exc))
        reply = plan_reply(words, max_tokens, b)
        out, cached = reply.output_tokens, reply.cached
        fresh = words - cached
        stop_reason = "max_tokens" if reply.truncated else "end_turn"
        model_json = dumps(body["model"])
        msg_id = self.ids.next("msg_01")
        headers = {"Content-Type": JSON_CT, "request-id": self.ids.next("req_01")}

        if not body.get("stream"):
            payload = (_MESSAGE_TMPL % (msg_id, model_json, TEXT_JSON[out], stop_reason, fresh, out, cached)).encode()
            return await send_body(request, record, b, payload, headers)
        return await send_stream(
            request,
            record,
            b,
            headers,
            head=(_START_TMPL % (msg_id, model_json, fresh, cached)).encode() + _BLOCK_START + _PING,
            deltas=_DELTAS[:out],
            tail=_BLOCK_STOP + (_DELTA_TMPL % (stop_reason, fresh, cached, out)).encode() + _MESSAGE_STOP,
            malformed=_MALFORMED_SSE,
        )

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, _b, early = await self._prologue(request, body)
        if early is not None:
            return finish(record, early)
        if isinstance(body, dict):
            body = {**body, "max_tokens": 1}
        try:
            words, _max = _validate(body)
        except Invalid as exc:
            return finish(record, _invalid(exc))
        return finish(record, json_response(dumps({"input_tokens": words}).encode()))

    async def models(self, request: web.Request) -> web.StreamResponse:
        record, _b, early = await self._prologue(request, None)
        if early is not None:
            return finish(record, early)
        return finish(record, json_response(_MODELS_BODY))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return json_response(_NOT_FOUND, 404)
