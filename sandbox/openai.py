"""The sandbox's OpenAI API: ``/openai/v1/chat/completions``, ``/embeddings`` and ``/models``,
answered the way the real API answers, errors and SSE chunks included.

Authentication: ``Authorization: Bearer <key>``; any non-empty key is valid unless it carries a
behaviour word.

Usage: ``W`` counts the words of all text content of all messages. ``prompt_tokens = W``
(includes cached tokens, as the real API), ``prompt_tokens_details.cached_tokens = C``,
``completion_tokens = M``; without ``max_completion_tokens`` / ``max_tokens`` ``M = 12``.
Embeddings: :func:`embedding_for` (sha256-derived, multiples of 1/128 so float32/base64 is
exact); ``prompt_tokens`` = sum over inputs of ``max(1, words)``.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Iterable
from typing import Any, Final

from aiohttp import web

from .behaviour import RETRY_AFTER_SECONDS, Behaviour
from .replies import DELTA_TEXT, TEXT_JSON, plan_reply
from .requestlog import LogRecord, RequestLog
from .wire import (
    JSON_CT,
    MALFORMED_JSON,
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
)

__all__ = ["EMBEDDING_DIMS", "OPENAI_MODELS", "OPENAI_QUOTA_MESSAGE", "OpenAIAPI", "embedding_for", "mask_key"]

EMBEDDING_DIMS: Final = 8
OPENAI_MODELS: Final = (
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4o",
    "gpt-5",
    "gpt-5-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
OPENAI_QUOTA_MESSAGE: Final = "You exceeded your current quota, please check your plan and billing details."
_NO_KEY_MESSAGE: Final = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    "a username. You can obtain an API key from https://platform.openai.com/account/api-keys."
)


def mask_key(key: str) -> str:
    """Mask a key like the OpenAI API does: first few chars + ``****`` + last 4."""
    if len(key) >= 16:
        return f"{key[:8]}****{key[-4:]}"
    if len(key) >= 8:
        return f"{key[:2]}****{key[-2:]}"
    return "****"


def embedding_for(text: str, dimensions: int = EMBEDDING_DIMS) -> list[float]:
    """Deterministic embedding of ``text``: bytes of sha256 chained, mapped to (b-128)/128.

    Every value is a multiple of 1/128, so it survives float32/base64 round trips exactly.
    """
    out: list[float] = []
    seed = text.encode("utf-8", "surrogatepass")
    block = 0
    while len(out) < dimensions:
        digest = hashlib.sha256(seed if block == 0 else seed + block.to_bytes(4, "big")).digest()
        out.extend((b - 128) / 128.0 for b in digest)
        block += 1
    return out[:dimensions]


# -- precomputed payloads --------------------------------------------------------------

_ROLE: Final = '"role":"assistant",'
_DELTA_JSON: Final = tuple(dumps(t) for t in DELTA_TEXT)
_COMPLETION_TMPL: Final = (
    '{"id":"%s","object":"chat.completion","created":%d,"model":%s,'
    '"choices":[{"index":0,"message":{"role":"assistant","content":%s,"refusal":null,'
    '"annotations":[]},"logprobs":null,"finish_reason":"%s"}],'
    '"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    '"prompt_tokens_details":{"cached_tokens":%d,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},'
    '"service_tier":"default","system_fingerprint":"fp_sandbox"}'
)
_USAGE_TMPL: Final = (
    '{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    '"prompt_tokens_details":{"cached_tokens":%d,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)
_MALFORMED_SSE: Final = b'data: {"id": "chatcmpl-sandbox", "obj\n\n'
_MODELS_BODY: Final = dumps(
    {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 1735689600, "owned_by": "openai"} for m in OPENAI_MODELS],
    }
).encode()


def _error_body(message: str, etype: str, code: str | None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": etype, "param": param, "code": code}}).encode()


_RATE_LIMIT_HEADERS: Final = {
    **RATE_HEADERS,
    "x-ratelimit-limit-requests": "3",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": f"{RETRY_AFTER_SECONDS}s",
}
# Why a request is refused -> (body, status, extra headers); ``invalid`` names the masked key,
# so its answer is built per request (:func:`_invalid_key`).
_REFUSALS: Final[dict[Refusal, tuple[bytes, int, dict[str, str] | None]]] = {
    "no_key": (_error_body(_NO_KEY_MESSAGE, "invalid_request_error", None), 401, None),
    "ratelimit": (
        _error_body(
            "Rate limit reached for requests in organization org-sandbox on requests per min (RPM): "
            f"Limit 3, Used 3, Requested 1. Please try again in {RETRY_AFTER_SECONDS}s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "requests",
            "rate_limit_exceeded",
        ),
        429,
        _RATE_LIMIT_HEADERS,
    ),
    "noquota": (_error_body(OPENAI_QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota"), 429, None),
    "overloaded": (
        _error_body("The engine is currently overloaded, please try again later.", "server_error", None),
        503,
        None,
    ),
    "error": (
        _error_body(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        500,
        None,
    ),
}


def _invalid_key(key: str) -> web.Response:
    message = (
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return json_response(_error_body(message, "invalid_request_error", "invalid_api_key"), 401)


def _invalid(exc: Invalid) -> web.Response:
    return json_response(_error_body(exc.message, "invalid_request_error", exc.code, exc.param), 400)


# -- body validation -------------------------------------------------------------------

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise Invalid(
            f"Invalid type for '{name}': expected an integer, but got {type(value).__name__}.",
            name,
            "invalid_type",
        )
    if value < 1:
        raise Invalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    return value


def _chat_validate(body: Any) -> tuple[int, int | None, bool, bool]:
    """(prompt words W >= 1, max tokens or None, stream, include_usage) or raise Invalid."""
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise Invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise Invalid("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    if not messages:
        raise Invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    words = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            raise Invalid(f"Invalid value for 'messages[{i}].role'.", f"messages.[{i}].role", "invalid_value")
        content = msg.get("content")
        if content is None or isinstance(content, str):
            words += len(content.split()) if content else 0
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        words += len(text.split())
        else:
            raise Invalid(
                f"Invalid type for 'messages[{i}].content'.",
                f"messages.[{i}].content",
                "invalid_type",
            )
    max_tokens = _positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _positive_int(body, "max_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Invalid("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise Invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        if isinstance(options, dict):
            include_usage = options.get("include_usage") is True
    return max(words, 1), max_tokens, bool(stream), include_usage


def _embeddings_validate(body: Any) -> tuple[list[tuple[str, int]], str, str, int]:
    """([(text, tokens)], model, encoding_format, dimensions) or raise Invalid."""
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("you must provide a model parameter")
    raw = body.get("input")
    if raw is None:
        raise Invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    items: Iterable[Any]
    if isinstance(raw, str):
        items = [raw]
    elif isinstance(raw, list) and raw and all(type(t) is int for t in raw):
        items = [raw]  # one pre-tokenised input
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise Invalid("'$.input' is invalid. Please check the API reference.", "input", None)
    texts: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str) and item:
            texts.append((item, max(1, len(item.split()))))
        elif isinstance(item, list) and item and all(type(t) is int for t in item):
            texts.append((dumps(item), len(item)))
        else:
            raise Invalid("'$.input' is invalid. Please check the API reference.", "input", None)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise Invalid(
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    dims = body.get("dimensions", EMBEDDING_DIMS)
    if type(dims) is not int or not 1 <= dims <= 4096:
        raise Invalid("Invalid 'dimensions'.", "dimensions", "invalid_value")
    return texts, model, fmt, dims


# -- handlers --------------------------------------------------------------------------


class OpenAIAPI:
    """Handlers of the OpenAI routes, logging to one request log."""

    def __init__(self, log: RequestLog, ids: Ids) -> None:
        self.log = log
        self.ids = ids

    async def _prologue(self, request: web.Request, body: Any) -> tuple[LogRecord, Behaviour, web.Response | None]:
        key = bearer(request)
        record, behaviour, refusal = await api_prologue(self.log, request, "openai", key, body)
        if refusal is None:
            return record, behaviour, None
        if refusal == "invalid" and key:
            return record, behaviour, _invalid_key(key)
        return record, behaviour, json_response(*_REFUSALS[refusal])

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, b, early = await self._prologue(request, body)
        if early is not None:
            return finish(record, early)
        try:
            words, max_tokens, stream, include_usage = _chat_validate(body)
        except Invalid as exc:
            return finish(record, _invalid(exc))
        reply = plan_reply(words, max_tokens, b)
        out, cached = reply.output_tokens, reply.cached
        finish_reason = "length" if reply.truncated else "stop"
        model_json = dumps(body["model"])
        cid = self.ids.next("chatcmpl-sbx")
        created = int(time.time())
        headers = {"Content-Type": JSON_CT, "x-request-id": self.ids.next("req_")}

        if not stream:
            payload = (
                _COMPLETION_TMPL
                % (cid, created, model_json, TEXT_JSON[out], finish_reason, words, out, words + out, cached)
            ).encode()
            return await send_body(request, record, b, payload, headers)

        usage_null = ',"usage":null' if include_usage else ""
        prefix = (
            f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
            f'"model":{model_json},"service_tier":"default","system_fingerprint":"fp_sandbox",'
            '"choices":'
        )
        deltas = [
            (
                f'{prefix}[{{"index":0,"delta":{{{_ROLE if i == 0 else ""}"content":{_DELTA_JSON[i]}}},'
                f'"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n'
            ).encode()
            for i in range(out)
        ]
        tail = (
            f'{prefix}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish_reason}"}}]{usage_null}}}\n\n'
        ).encode()
        if include_usage:
            usage = _USAGE_TMPL % (words, out, words + out, cached)
            tail += f'{prefix}[],"usage":{usage}}}\n\n'.encode()
        tail += b"data: [DONE]\n\n"
        return await send_stream(
            request, record, b, headers, head=b"", deltas=deltas, tail=tail, malformed=_MALFORMED_SSE
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, b, early = await self._prologue(request, body)
        if early is not None:
            return finish(record, early)
        try:
            texts, model, fmt, dims = _embeddings_validate(body)
        except Invalid as exc:
            return finish(record, _invalid(exc))
        if b.malformed:
            return finish(record, json_response(MALFORMED_JSON))
        data: list[dict[str, Any]] = []
        tokens = 0
        for i, (text, words) in enumerate(texts):
            tokens += words
            vector = embedding_for(text, dims)
            emb: Any = vector
            if fmt == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": emb})
        payload = dumps(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        ).encode()
        return finish(record, json_response(payload))

    async def models(self, request: web.Request) -> web.StreamResponse:
        record, _b, early = await self._prologue(request, None)
        if early is not None:
            return finish(record, early)
        return finish(record, json_response(_MODELS_BODY))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            _error_body(f"Invalid URL ({request.method} {request.path})", "invalid_request_error", None),
            404,
        )
