"""The sandbox's Anthropic Messages API: ``/anthropic/v1/messages`` (+ ``count_tokens``,
``models``, ``models/{id}``), answered the way the real API answers, errors and SSE events
included.

Authentication: ``x-api-key: <key>`` or ``Authorization: Bearer <key>`` (the anthropic 2.x
SDK sends Bearer); any non-empty key is valid unless it carries a behaviour word.

Usage: ``W`` counts the words of ``system`` and of all text content of all messages (text
blocks, and text inside ``tool_result`` blocks), plus :data:`~sandbox.media.IMAGE_TOKENS` per
image, :data:`~sandbox.replies.TOOL_CALL_TOKENS` per ``tool_use`` block and
:func:`~sandbox.replies.tool_tokens` per tool definition. ``input_tokens`` excludes what the
cache read or wrote, so ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens
== W`` always. With the ``cached`` word half of ``W`` is read from the cache; otherwise blocks
marked ``cache_control`` (in ``tools``, ``system``, ``messages``, in that order) make the prompt
up to the last mark cacheable: a prefix seen before (same key, model and content) is read, the
rest up to the last mark is written.

Replies: text (12 words, fewer when ``max_tokens`` is smaller), or with ``tools`` a ``tool_use``
block (input from the tool's ``input_schema``, :mod:`sandbox.schema`) unless the last user
message carries ``tool_result`` blocks or ``tool_choice`` is ``none``; with ``thinking`` a
thinking block (:data:`~sandbox.replies.THINKING_TEXT`) comes first.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from .behaviour import Behaviour
from .media import IMAGE_MEDIA_TYPES, IMAGE_TOKENS, image_problem
from .promptcache import PrefixHasher, PromptCache
from .replies import (
    DELTA_TEXT,
    MAX_OUTPUT,
    TEXT_JSON,
    THINKING_TEXT,
    THINKING_WORDS,
    TOOL_CALL_TOKENS,
    plan_reply,
    reply_words,
    tool_tokens,
)
from .requestlog import LogRecord, RequestLog
from .schema import sample_for, split_pieces
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
    ("claude-opus-4-7", "Claude Opus 4.7"),
    ("claude-opus-4-6", "Claude Opus 4.6"),
    ("claude-opus-4-5", "Claude Opus 4.5"),
    ("claude-opus-4-1", "Claude Opus 4.1"),
    ("claude-opus-4-0", "Claude Opus 4"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-sonnet-4-0", "Claude Sonnet 4"),
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
_THINKING_DELTAS: Final = tuple(w if i == 0 else " " + w for i, w in enumerate(THINKING_WORDS))
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

_CREATED_AT: Final = "2025-01-01T00:00:00Z"
_MODEL_OBJECTS: Final = {
    i: {"type": "model", "id": i, "display_name": n, "created_at": _CREATED_AT} for i, n in ANTHROPIC_MODELS
}
_MODELS_BODY: Final = dumps(
    {
        "data": list(_MODEL_OBJECTS.values()),
        "has_more": False,
        "first_id": ANTHROPIC_MODELS[0][0],
        "last_id": ANTHROPIC_MODELS[-1][0],
    }
).encode()
_DATED_ID: Final = re.compile(r"-\d{8}$")


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

_TOOL_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_TOOL_CHOICES: Final = ("auto", "any", "tool", "none")
_MAX_BREAKPOINTS: Final = 4
_THINKING_DOCS: Final = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"


@dataclass(slots=True)
class _Scan:
    """What a walk over the content blocks found beyond text (all empty for a plain prompt)."""

    breakpoints: int = 0
    uses: list[str] = field(default_factory=list)  # tool_use ids of the current message
    results: list[tuple[str, int]] = field(default_factory=list)  # (tool_use_id, block index)


def _image_tokens(block: dict[str, Any], where: str) -> int:
    source = block.get("source")
    if not isinstance(source, dict):
        raise Invalid(f"{where}.source: Field required")
    stype = source.get("type")
    if stype == "base64":
        media_type = source.get("media_type")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise Invalid(
                f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
                "'image/webp'"
            )
        data = source.get("data")
        if not isinstance(data, str):
            raise Invalid(f"{where}.source.base64.data: Field required")
        problem = image_problem(media_type, data)
        if problem == "base64":
            raise Invalid(f"{where}.source.base64.data: The image data is not valid base64.")
        if problem:
            raise Invalid(f"{where}.source.base64.data: Image does not match the provided media type {media_type}")
    elif stype == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise Invalid(f"{where}.source.url.url: Input should be a valid URL")
    elif stype != "file":
        raise Invalid(
            f"{where}.source: Input tag '{stype}' found using 'type' does not match any of the expected tags: "
            "'base64', 'url', 'file'"
        )
    return IMAGE_TOKENS


def _blocks_words(content: Any, where: str, scan: _Scan) -> int:
    """Input tokens of a string or list of content blocks; validates the blocks on the way."""
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
        elif btype == "image":
            words += _image_tokens(block, f"{where}.{j}")
        elif btype == "tool_use":
            uid, name = block.get("id"), block.get("name")
            if not isinstance(uid, str) or not isinstance(name, str) or not isinstance(block.get("input"), dict):
                raise Invalid(f"{where}.{j}.tool_use: 'id', 'name' and 'input' (an object) are required")
            scan.uses.append(uid)
            words += TOOL_CALL_TOKENS
        elif btype == "tool_result":
            uid = block.get("tool_use_id")
            if not isinstance(uid, str):
                raise Invalid(f"{where}.{j}.tool_result.tool_use_id: Field required")
            scan.results.append((uid, j))
            if "content" in block:
                words += _blocks_words(block["content"], f"{where}.{j}.content", scan)
        if "cache_control" in block:
            scan.breakpoints += 1
    return words


def _check_tool_pairs(i: int, previous_uses: list[str], scan: _Scan) -> None:
    """Tool results answer the tool uses of the message just before, all of them."""
    answered = {uid for uid, _ in scan.results}
    missing = [uid for uid in previous_uses if uid not in answered]
    if missing:
        raise Invalid(
            f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in the "
            "next message."
        )
    for uid, j in scan.results:
        if uid not in previous_uses:
            raise Invalid(
                f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {uid}. Each "
                "`tool_result` block must have a corresponding `tool_use` block in the previous message."
            )


def _tools_tokens(tools: Any, scan: _Scan) -> int:
    if not isinstance(tools, list):
        raise Invalid("tools: Input should be a valid list")
    tokens = 0
    names: set[str] = set()
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise Invalid(f"tools.{k}: Input should be a valid dictionary")
        name = tool.get("name")
        if tool.get("type") in (None, "custom"):
            if name is None:
                raise Invalid(f"tools.{k}.custom.name: Field required")
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                raise Invalid(f"tools.{k}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
            schema = tool.get("input_schema")
            if schema is None:
                raise Invalid(f"tools.{k}.custom.input_schema: Field required")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise Invalid(f"tools.{k}.custom.input_schema.type: Input should be 'object'")
        elif not isinstance(name, str):
            raise Invalid(f"tools.{k}.name: Field required")
        if name in names:
            raise Invalid("tools: Tool names must be unique.")
        names.add(name)
        if "cache_control" in tool:
            scan.breakpoints += 1
        tokens += tool_tokens(tool)
    return tokens


@dataclass(slots=True)
class _Ask:
    """A validated Messages request: its input tokens and what the reply must hold."""

    words: int
    max_tokens: int
    tool: dict[str, Any] | None = None  # the tool to call, if the reply is a tool_use
    thinking: bool = False
    breakpoints: int = 0


def _thinking(body: dict[str, Any], max_tokens: int | None) -> bool:
    thinking = body.get("thinking")
    if thinking is None:
        return False
    ttype = thinking.get("type") if isinstance(thinking, dict) else None
    if ttype not in ("enabled", "disabled", "adaptive"):
        raise Invalid(
            f"thinking: Input tag '{ttype}' found using 'type' does not match any of the expected tags: "
            "'enabled', 'disabled', 'adaptive'"
        )
    if ttype == "disabled":
        return False
    if ttype == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is None:
            raise Invalid("thinking.enabled.budget_tokens: Field required")
        if type(budget) is not int:
            raise Invalid("thinking.enabled.budget_tokens: Input should be a valid integer")
        if budget < 1024:
            raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if max_tokens is not None and max_tokens <= budget:
            raise Invalid(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at "
                f"{_THINKING_DOCS}#max-tokens-and-context-window-size"
            )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise Invalid(
            "`temperature` may only be set to 1 when thinking is enabled or in adaptive mode. Please consult our "
            f"documentation at {_THINKING_DOCS}#feature-compatibility"
        )
    return True


def _chosen_tool(body: dict[str, Any], last_is_result: bool, thinking: bool) -> dict[str, Any] | None:
    """The tool the reply calls, if any (validates ``tool_choice``)."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    ctype: Any = "auto"
    if choice is not None:
        ctype = choice.get("type") if isinstance(choice, dict) else None
        if ctype not in _TOOL_CHOICES:
            raise Invalid(
                f"tool_choice: Input tag '{ctype}' found using 'type' does not match any of the expected tags: "
                "'auto', 'any', 'tool', 'none'"
            )
        if not tools and ctype != "none":
            raise Invalid("tool_choice may only be specified while providing tools.")
        if thinking and ctype in ("any", "tool"):
            raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")
    candidates = [t for t in tools if t.get("type") in (None, "custom")]
    if ctype == "tool":
        name = choice.get("name") if isinstance(choice, dict) else None
        if not isinstance(name, str):
            raise Invalid("tool_choice.tool.name: Field required")
        candidates = [t for t in tools if t.get("name") == name]
        if not candidates:
            raise Invalid(f"Tool '{name}' not found in 'tools'.")
    if ctype == "none" or last_is_result or not candidates:
        return None
    chosen: dict[str, Any] = candidates[0]
    return chosen


def _validate(body: Any, *, counting: bool = False) -> _Ask:
    """The validated request, or raise Invalid; ``counting`` (count_tokens) needs no max_tokens."""
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise Invalid("model: Field required")
    if not isinstance(model, str) or not model:
        raise Invalid("model: Input should be a valid string")
    max_tokens = body.get("max_tokens")
    if not counting:
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
    scan = _Scan()
    words = 0
    previous_uses: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        if msg.get("role") not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in msg:
            raise Invalid(f"messages.{i}.content: Field required")
        words += _blocks_words(msg["content"], f"messages.{i}.content", scan)
        if previous_uses or scan.results:
            _check_tool_pairs(i, previous_uses, scan)
        previous_uses, scan.uses, scan.results = scan.uses, [], []
    last = messages[-1]
    last_is_result = (
        last.get("role") == "user"
        and isinstance(last["content"], list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"])
    )
    system = body.get("system")
    if system is not None:
        words += _blocks_words(system, "system", scan)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Invalid("stream: Input should be a valid boolean")
    ask = _Ask(max(words, 1), max_tokens if type(max_tokens) is int else 1)
    tools = body.get("tools")
    if tools is not None:
        ask.words += _tools_tokens(tools, scan)
    if "thinking" in body:
        ask.thinking = _thinking(body, None if counting else max_tokens)
    if tools is not None or "tool_choice" in body:
        ask.tool = _chosen_tool(body, last_is_result, ask.thinking)
    if scan.breakpoints > _MAX_BREAKPOINTS:
        raise Invalid(
            f"A maximum of {_MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {scan.breakpoints}."
        )
    ask.breakpoints = scan.breakpoints
    return ask


def _invalid(exc: Invalid) -> web.Response:
    return json_response(_error_body("invalid_request_error", exc.message), 400)


# -- prompt caching --------------------------------------------------------------------


def _unmarked(part: Any) -> Any:
    """A block as the cache sees it: where the mark sits does not change the content."""
    if isinstance(part, dict) and "cache_control" in part:
        return {k: v for k, v in part.items() if k != "cache_control"}
    return part


def _cache_marks(body: dict[str, Any], scope: tuple[str | None, str]) -> tuple[list[bytes], list[int], str]:
    """Digests and token counts of the prompt up to each ``cache_control`` mark (tools, system,
    messages order), and the ttl of the last mark."""
    hasher = PrefixHasher(*scope)
    digests: list[bytes] = []
    tokens: list[int] = []
    ttl = "5m"
    total = 0
    scratch = _Scan()

    def take(part: Any, where: str, count: int | None = None) -> None:
        nonlocal total, ttl
        total += count if count is not None else _blocks_words([part], where, scratch)
        hasher.feed(_unmarked(part))
        if isinstance(part, dict) and isinstance(part.get("cache_control"), dict):
            digests.append(hasher.digest())
            tokens.append(total)
            ttl = "1h" if part["cache_control"].get("ttl") == "1h" else "5m"

    for tool in body.get("tools") or []:
        take(tool, "tools", tool_tokens(tool))
    system = body.get("system")
    if isinstance(system, str):
        take(system, "system", len(system.split()))
    elif isinstance(system, list):
        for block in system:
            take(block, "system")
    for msg in body["messages"]:
        content = msg["content"]
        hasher.feed(msg["role"])
        if isinstance(content, str):
            take(content, "messages", len(content.split()))
        else:
            for block in content:
                take(block, "messages")
    return digests, tokens, ttl


def _cache_usage(cache: PromptCache, body: dict[str, Any], key: str | None) -> tuple[int, int, str]:
    """(tokens read from the cache, tokens written to it, ttl of the write)."""
    digests, tokens, ttl = _cache_marks(body, (key, body["model"]))
    if not digests:
        return 0, 0, ttl
    read = next((t for d, t in zip(reversed(digests), reversed(tokens), strict=True) if cache.seen(d)), 0)
    cache.remember(digests)
    return read, tokens[-1] - read, ttl


# -- rich replies (tools, thinking, prompt caching) -------------------------------------


def _signature(text: str) -> str:
    return base64.b64encode(hashlib.sha256(b"sandbox-thinking\x00" + text.encode()).digest() * 2).decode()


@dataclass(slots=True)
class _Usage:
    fresh: int
    read: int
    write: int
    ttl: str
    output: int

    def as_dict(self, *, output: int | None = None) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": self.fresh,
            "cache_creation_input_tokens": self.write,
            "cache_read_input_tokens": self.read,
            "output_tokens": self.output if output is None else output,
        }
        if self.write:
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": self.write if self.ttl == "5m" else 0,
                "ephemeral_1h_input_tokens": self.write if self.ttl == "1h" else 0,
            }
        return usage


def _delta_event(index: int, delta: dict[str, Any]) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _block_events(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[bytes]:
    """One streamed content block: its start joined to the first delta, its stop to the last,
    so each piece is one step of ``slowchunk`` / ``cut``."""
    pieces = [_delta_event(index, d) for d in deltas] or [b""]
    pieces[0] = (
        sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}) + pieces[0]
    )
    pieces[-1] += sse("content_block_stop", {"type": "content_block_stop", "index": index})
    return pieces


# -- handlers --------------------------------------------------------------------------


class AnthropicAPI:
    """Handlers of the Anthropic routes, logging to one request log."""

    def __init__(self, log: RequestLog, ids: Ids, cache: PromptCache | None = None) -> None:
        self.log = log
        self.ids = ids
        self.cache = cache if cache is not None else PromptCache()

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
            ask = _validate(body)
        except Invalid as exc:
            return finish(record, _invalid(exc))
        if ask.tool is not None or ask.thinking or (ask.breakpoints and not b.cached):
            return await self._rich(request, record, b, body, ask)
        reply = plan_reply(ask.words, ask.max_tokens, b)
        out, cached = reply.output_tokens, reply.cached
        fresh = ask.words - cached
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

    async def _rich(
        self, request: web.Request, record: LogRecord, b: Behaviour, body: dict[str, Any], ask: _Ask
    ) -> web.StreamResponse:
        """A reply with a thinking block, a tool call or prompt-cache figures, built per request."""
        if b.cached:
            read, write, ttl = ask.words // 2, 0, "5m"
        elif ask.breakpoints:
            read, write, ttl = _cache_usage(self.cache, body, record.key_id)
        else:
            read, write, ttl = 0, 0, "5m"
        budget = ask.max_tokens
        blocks: list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = []  # (final, start, deltas)
        spent = 0
        if ask.thinking:
            signature = _signature(THINKING_TEXT)
            blocks.append(
                (
                    {"type": "thinking", "thinking": THINKING_TEXT, "signature": signature},
                    {"type": "thinking", "thinking": "", "signature": ""},
                    [
                        *({"type": "thinking_delta", "thinking": t} for t in _THINKING_DELTAS),
                        {"type": "signature_delta", "signature": signature},
                    ],
                )
            )
            spent = len(THINKING_WORDS)
        if ask.tool is not None:
            tool_input = sample_for(ask.tool.get("input_schema", {}))
            tool_id = self.ids.next("toolu_01")
            name = ask.tool["name"]
            blocks.append(
                (
                    {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input},
                    {"type": "tool_use", "id": tool_id, "name": name, "input": {}},
                    [{"type": "input_json_delta", "partial_json": p} for p in split_pieces(dumps(tool_input))],
                )
            )
            out = spent + TOOL_CALL_TOKENS
            stop_reason = "tool_use" if out <= budget else "max_tokens"
            out = min(out, budget)
        else:
            words = max(0, min(MAX_OUTPUT, budget - spent))
            text = reply_words(words)
            blocks.append(
                (
                    {"type": "text", "text": text},
                    {"type": "text", "text": ""},
                    [{"type": "text_delta", "text": t} for t in DELTA_TEXT[:words]],
                )
            )
            out = spent + words
            stop_reason = "max_tokens" if budget - spent < MAX_OUTPUT else "end_turn"
        usage = _Usage(ask.words - read - write, read, write, ttl, out)
        msg_id = self.ids.next("msg_01")
        headers = {"Content-Type": JSON_CT, "request-id": self.ids.next("req_01")}
        message: dict[str, Any] = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [final for final, _, _ in blocks],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage.as_dict(),
        }
        if not body.get("stream"):
            return await send_body(request, record, b, dumps(message).encode(), headers)
        start = {**message, "content": [], "stop_reason": None, "usage": usage.as_dict(output=1)}
        pieces: list[bytes] = []
        for index, (_, block_start, deltas) in enumerate(blocks):
            pieces.extend(_block_events(index, block_start, deltas))
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage.as_dict(),
        }
        return await send_stream(
            request,
            record,
            b,
            headers,
            head=sse("message_start", {"type": "message_start", "message": start}) + _PING,
            deltas=pieces,
            tail=sse("message_delta", delta) + _MESSAGE_STOP,
            malformed=_MALFORMED_SSE,
        )

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, _b, early = await self._prologue(request, body)
        if early is not None:
            return finish(record, early)
        try:
            ask = _validate(body, counting=True)
        except Invalid as exc:
            return finish(record, _invalid(exc))
        return finish(record, json_response(dumps({"input_tokens": ask.words}).encode()))

    async def models(self, request: web.Request) -> web.StreamResponse:
        record, _b, early = await self._prologue(request, None)
        if early is not None:
            return finish(record, early)
        return finish(record, json_response(_MODELS_BODY))

    async def model(self, request: web.Request) -> web.StreamResponse:
        record, _b, early = await self._prologue(request, None)
        if early is not None:
            return finish(record, early)
        model_id = request.match_info["model_id"]
        found = _MODEL_OBJECTS.get(model_id) or _MODEL_OBJECTS.get(_DATED_ID.sub("", model_id))
        if found is None:
            return finish(record, json_response(_error_body("not_found_error", f"model: {model_id}"), 404))
        return finish(record, json_response(dumps(found).encode()))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return json_response(_NOT_FOUND, 404)
