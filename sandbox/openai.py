"""The sandbox's OpenAI API: ``/openai/v1/chat/completions``, ``/embeddings``, ``/models`` and
``/models/{id}``, answered the way the real API answers, errors and SSE chunks included; the
Responses and audio endpoints (:mod:`sandbox.responses`, :mod:`sandbox.audio`) share its
authentication, errors and rules.

Authentication: ``Authorization: Bearer <key>``; any non-empty key is valid unless it carries a
behaviour word.

Usage: ``W`` counts the words of all text content of all messages, plus
:data:`~sandbox.media.IMAGE_TOKENS` per image, :data:`~sandbox.media.AUDIO_INPUT_TOKENS` per
``input_audio`` part (also reported as ``audio_tokens``), :data:`~sandbox.replies.TOOL_CALL_TOKENS`
per tool call in an assistant message and :func:`~sandbox.replies.tool_tokens` per tool.
``prompt_tokens = W`` (includes cached tokens, as the real API). ``cached_tokens`` is ``W // 2``
with the ``cached`` word; otherwise, for a prompt of at least 1,024 tokens, the longest prefix
(tools, then whole messages) the same key sent to the same model before, rounded down to a
multiple of 128, when that is at least 1,024. ``completion_tokens = n * (M + R)``: ``M`` reply
words (12, fewer when ``max_completion_tokens`` / ``max_tokens`` is smaller), a tool call or a
json_schema output :data:`~sandbox.replies.TOOL_CALL_TOKENS`; ``R`` the reasoning tokens of
gpt-5* and o-series models (:data:`~sandbox.replies.REASONING_TOKENS`, spent first from the
budget). Embeddings: :func:`embedding_for` (sha256-derived, multiples of 1/128 so
float32/base64 is exact); ``prompt_tokens`` = sum over inputs of ``max(1, words)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from .behaviour import RETRY_AFTER_SECONDS, Behaviour
from .media import AUDIO_INPUT_TOKENS, IMAGE_MEDIA_TYPES, IMAGE_TOKENS, image_problem
from .promptcache import PrefixHasher, PromptCache
from .replies import (
    DEFAULT_EFFORT,
    DELTA_TEXT,
    MAX_OUTPUT,
    REASONING_TOKENS,
    TEXT_JSON,
    TOOL_CALL_TOKENS,
    plan_reply,
    reply_words,
    tool_tokens,
)
from .requestlog import LogRecord, RequestLog
from .schema import sample_for, split_pieces, strict_problem
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
)

__all__ = [
    "CACHE_MIN_TOKENS",
    "EMBEDDING_DIMS",
    "OPENAI_MODELS",
    "OPENAI_QUOTA_MESSAGE",
    "Budget",
    "OpenAIAPI",
    "auto_cached",
    "embedding_for",
    "error_body",
    "image_tokens",
    "invalid_response",
    "is_reasoning_model",
    "mask_key",
    "model_not_found",
    "plan_budget",
    "positive_int",
    "reasoning_tokens_for",
]

EMBEDDING_DIMS: Final = 8
# (id, owned_by); every id GET /models/{id} knows.
OPENAI_MODELS: Final = (
    ("gpt-4.1", "system"),
    ("gpt-4.1-mini", "system"),
    ("gpt-4.1-nano", "system"),
    ("gpt-4o", "system"),
    ("gpt-4o-mini", "system"),
    ("gpt-5", "system"),
    ("gpt-5-mini", "system"),
    ("gpt-5-nano", "system"),
    ("gpt-5.1", "system"),
    ("gpt-5.2", "system"),
    ("o3", "system"),
    ("o4-mini", "system"),
    ("text-embedding-3-small", "system"),
    ("text-embedding-3-large", "system"),
    ("tts-1", "openai-internal"),
    ("tts-1-hd", "system"),
    ("gpt-4o-mini-tts", "system"),
    ("gpt-4o-transcribe", "system"),
    ("gpt-4o-mini-transcribe", "system"),
    ("whisper-1", "openai-internal"),
)
OPENAI_QUOTA_MESSAGE: Final = "You exceeded your current quota, please check your plan and billing details."
CACHE_MIN_TOKENS: Final = 1024
_CACHE_STEP: Final = 128
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
    '"usage":%s,"service_tier":"default","system_fingerprint":"fp_sandbox"}'
)
_USAGE_TMPL: Final = (
    '{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    '"prompt_tokens_details":{"cached_tokens":%d,"audio_tokens":%d},'
    '"completion_tokens_details":{"reasoning_tokens":%d,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)
_MALFORMED_SSE: Final = b'data: {"id": "chatcmpl-sandbox", "obj\n\n'
_MODEL_OBJECTS: Final = {
    m: {"id": m, "object": "model", "created": 1735689600, "owned_by": owner} for m, owner in OPENAI_MODELS
}
_MODELS_BODY: Final = dumps({"object": "list", "data": list(_MODEL_OBJECTS.values())}).encode()


def _usage_json(prompt: int, completion: int, cached: int, audio: int, reasoning: int) -> str:
    return _USAGE_TMPL % (prompt, completion, prompt + completion, cached, audio, reasoning)


def error_body(message: str, etype: str, code: str | None, param: str | None = None) -> bytes:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
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
    "no_key": (error_body(_NO_KEY_MESSAGE, "invalid_request_error", None), 401, None),
    "ratelimit": (
        error_body(
            "Rate limit reached for requests in organization org-sandbox on requests per min (RPM): "
            f"Limit 3, Used 3, Requested 1. Please try again in {RETRY_AFTER_SECONDS}s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "requests",
            "rate_limit_exceeded",
        ),
        429,
        _RATE_LIMIT_HEADERS,
    ),
    "noquota": (error_body(OPENAI_QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota"), 429, None),
    "overloaded": (
        error_body("The engine is currently overloaded, please try again later.", "server_error", None),
        503,
        None,
    ),
    "error": (
        error_body(
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
    return json_response(error_body(message, "invalid_request_error", "invalid_api_key"), 401)


def invalid_response(exc: Invalid) -> web.Response:
    """The 400 for a request the API refuses."""
    return json_response(error_body(exc.message, "invalid_request_error", exc.code, exc.param), 400)


def model_not_found(model: str) -> web.Response:
    """The 404 for a model the API does not know."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return json_response(error_body(message, "invalid_request_error", "model_not_found"), 404)


# -- shared rules ----------------------------------------------------------------------

_REASONING_PREFIXES: Final = ("gpt-5", "o1", "o3", "o4")
_TOOL_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_IMAGE_DATA_URL: Final = re.compile(r"data:([\w/+.-]+);base64,(.*)", re.DOTALL)


def is_reasoning_model(model: str) -> bool:
    """gpt-5* and o-series models reason before they answer (and report reasoning tokens)."""
    return model.startswith(_REASONING_PREFIXES) and not model.startswith("gpt-5-chat")


def reasoning_tokens_for(model: str, effort: Any, param: str) -> int:
    """Reasoning tokens for ``model`` at ``effort`` (None: the default), or raise Invalid."""
    if effort is None:
        return REASONING_TOKENS[DEFAULT_EFFORT] if is_reasoning_model(model) else 0
    if not is_reasoning_model(model):
        raise Invalid(
            f"Unsupported parameter: '{param}' is not supported with this model.", param, "unsupported_parameter"
        )
    if effort not in REASONING_TOKENS:
        supported = ", ".join(f"'{e}'" for e in REASONING_TOKENS)
        raise Invalid(f"Invalid value: '{effort}'. Supported values are: {supported}.", param, "unsupported_value")
    return REASONING_TOKENS[effort]


def positive_int(body: dict[str, Any], name: str, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise Invalid(
            f"Invalid type for '{name}': expected an integer, but got {type(value).__name__}.",
            name,
            "invalid_type",
        )
    if value < minimum:
        raise Invalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    return value


@dataclass(frozen=True, slots=True)
class Budget:
    """How one choice spends its output budget: reasoning first, then the answer."""

    reasoning: int
    answer: int
    truncated: bool

    @property
    def output(self) -> int:
        return self.reasoning + self.answer


def plan_budget(max_tokens: int | None, reasoning: int, wanted: int) -> Budget:
    """Reasoning ``reasoning`` then an answer of ``wanted`` tokens, within ``max_tokens``."""
    if max_tokens is None:
        return Budget(reasoning, wanted, False)
    spent = min(reasoning, max_tokens)
    answer = min(wanted, max_tokens - spent)
    return Budget(spent, answer, answer < wanted)


def image_tokens(url: Any, param: str) -> int:
    """Input tokens of one image given by URL (https or a base64 ``data:`` URL), or raise Invalid."""
    if not isinstance(url, str):
        raise Invalid(f"Invalid type for '{param}': expected a string.", param, "invalid_type")
    if url.startswith("data:"):
        found = _IMAGE_DATA_URL.fullmatch(url)
        if found is None:
            raise Invalid(
                f"Invalid '{param}'. Expected a base64-encoded data URL with an image MIME type (e.g. "
                "'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got an invalid value.",
                param,
                "invalid_value",
            )
        media_type, data = found.groups()
        if media_type not in IMAGE_MEDIA_TYPES:
            raise Invalid(
                "You uploaded an unsupported image. Please make sure your image has of one the following formats: "
                "['png', 'jpeg', 'gif', 'webp'].",
                None,
                "invalid_image_format",
            )
        if image_problem(media_type, data):
            raise Invalid(
                "You uploaded an unsupported image. Please make sure your image is valid.",
                None,
                "invalid_image_format",
            )
    elif not url.startswith(("https://", "http://")):
        raise Invalid(
            f"Invalid '{param}'. Expected a valid URL, but got a value with an invalid format.",
            param,
            "invalid_value",
        )
    return IMAGE_TOKENS


def _audio_tokens(audio: Any, param: str) -> int:
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise Invalid(f"Missing required parameter: '{param}.data'.", f"{param}.data", "missing_required_parameter")
    if audio.get("format") not in ("wav", "mp3"):
        raise Invalid(
            f"Invalid value: '{audio.get('format')}'. Supported values are: 'wav' and 'mp3'.",
            f"{param}.format",
            "invalid_value",
        )
    try:
        base64.b64decode(audio["data"], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(
            f"Invalid '{param}.data': expected base64-encoded audio.", f"{param}.data", "invalid_value"
        ) from None
    return AUDIO_INPUT_TOKENS


def auto_cached(cache: PromptCache, scope: tuple[str | None, str], parts: Iterable[tuple[Any, int]], total: int) -> int:
    """Tokens read from OpenAI's automatic prompt cache: the longest prefix of ``parts`` (each
    with its tokens) seen before, in steps of 128 from 1,024; every prefix is remembered."""
    if total < CACHE_MIN_TOKENS:
        return 0
    hasher = PrefixHasher(*scope)
    digests: list[bytes] = []
    cached = 0
    running = 0
    for part, tokens in parts:
        hasher.feed(part)
        running += tokens
        if running >= CACHE_MIN_TOKENS:
            digest = hasher.digest()
            digests.append(digest)
            if cache.seen(digest):
                cached = running
    cache.remember(digests)
    return cached // _CACHE_STEP * _CACHE_STEP if cached >= CACHE_MIN_TOKENS else 0


# -- chat body validation --------------------------------------------------------------

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_PART_TYPES: Final = "'text', 'image_url', 'input_audio', 'refusal', 'audio', and 'file'"


@dataclass(slots=True)
class _Chat:
    """A validated chat request: its input tokens and what the reply must hold."""

    words: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    audio: int = 0
    n: int = 1
    tool: dict[str, Any] | None = None  # the function to call
    json: str | None = None  # "json_object" | "json_schema"
    schema: Any = None
    pending: list[str] = field(default_factory=list)  # tool calls awaiting their results

    @property
    def plain(self) -> bool:
        return self.n == 1 and self.tool is None and self.json is None


def _part_tokens(part: Any, where: str, chat: _Chat) -> int:
    if not isinstance(part, dict):
        raise Invalid(
            f"Invalid type for '{where}': expected an object, but got {type(part).__name__} instead.",
            where,
            "invalid_type",
        )
    ptype = part.get("type")
    if ptype == "text":
        text = part.get("text")
        return len(text.split()) if isinstance(text, str) else 0
    if ptype == "image_url":
        image = part.get("image_url")
        return image_tokens(image.get("url") if isinstance(image, dict) else None, f"{where}.image_url.url")
    if ptype == "input_audio":
        tokens = _audio_tokens(part.get("input_audio"), f"{where}.input_audio")
        chat.audio += tokens
        return tokens
    if ptype == "refusal":
        refusal = part.get("refusal")
        return len(refusal.split()) if isinstance(refusal, str) else 0
    if ptype in ("file", "audio"):
        return 0
    raise Invalid(f"Invalid value: '{ptype}'. Supported values are: {_PART_TYPES}.", f"{where}.type", "invalid_value")


def _message_tokens(i: int, msg: Any, chat: _Chat) -> int:
    """Input tokens of message ``i``; checks it and its place in a tool-call exchange."""
    if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
        raise Invalid(f"Invalid value for 'messages[{i}].role'.", f"messages.[{i}].role", "invalid_value")
    role = msg["role"]
    if chat.pending and role != "tool":
        raise Invalid(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(chat.pending)}",
            f"messages.[{i}].role",
        )
    words = 0
    content = msg.get("content")
    if content is None or isinstance(content, str):
        words += len(content.split()) if content else 0
    elif isinstance(content, list):
        for j, part in enumerate(content):
            words += _part_tokens(part, f"messages[{i}].content[{j}]", chat)
    else:
        raise Invalid(f"Invalid type for 'messages[{i}].content'.", f"messages.[{i}].content", "invalid_type")
    if role == "assistant" and msg.get("tool_calls"):
        calls = msg["tool_calls"]
        if not isinstance(calls, list):
            raise Invalid(f"Invalid type for 'messages[{i}].tool_calls'.", f"messages.[{i}].tool_calls", "invalid_type")
        for call in calls:
            cid = call.get("id") if isinstance(call, dict) else None
            if not isinstance(cid, str):
                raise Invalid(
                    f"Missing required parameter: 'messages[{i}].tool_calls[0].id'.",
                    f"messages.[{i}].tool_calls.[0].id",
                    "missing_required_parameter",
                )
            chat.pending.append(cid)
            words += TOOL_CALL_TOKENS
    elif role == "tool":
        cid = msg.get("tool_call_id")
        if not isinstance(cid, str):
            raise Invalid(
                "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.",
                f"messages.[{i}].tool_call_id",
                "missing_required_parameter",
            )
        if cid not in chat.pending:
            raise Invalid(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                "'tool_calls'.",
                f"messages.[{i}].role",
            )
        chat.pending.remove(cid)
    return words


def _function_tools(tools: Any) -> int:
    """Input tokens of chat ``tools`` (``{"type": "function", "function": {...}}``), checked."""
    if not isinstance(tools, list):
        raise Invalid("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    tokens = 0
    for k, tool in enumerate(tools):
        ttype = tool.get("type") if isinstance(tool, dict) else None
        if ttype != "function":
            raise Invalid(
                f"Invalid value: '{ttype}'. Supported values are: 'function' and 'custom'.",
                f"tools[{k}].type",
                "invalid_value",
            )
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise Invalid(
                f"Missing required parameter: 'tools[{k}].function.name'.",
                f"tools[{k}].function.name",
                "missing_required_parameter",
            )
        _check_function(name, function.get("parameters"), function.get("strict"), f"tools[{k}].function")
        tokens += tool_tokens(tool)
    return tokens


def _check_function(name: str, parameters: Any, strict: Any, where: str) -> None:
    if not _TOOL_NAME.fullmatch(name):
        raise Invalid(
            f"Invalid '{where}.name': string does not match pattern. Expected a string that matches the pattern "
            "'^[a-zA-Z0-9_-]+$'.",
            f"{where}.name",
            "invalid_value",
        )
    if strict is True:
        problem = strict_problem(parameters)
        if problem:
            raise Invalid(
                f"Invalid schema for function '{name}': {problem}", f"{where}.parameters", "invalid_function_parameters"
            )


def _chosen_function(tools: list[dict[str, Any]], choice: Any, last_role: str) -> dict[str, Any] | None:
    """The function the reply calls, if any (validates ``tool_choice``)."""
    if not tools:
        if choice is not None:
            raise Invalid(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                "tool_choice",
            )
        return None
    functions = [t["function"] for t in tools]
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise Invalid("Invalid value for 'tool_choice'.", "tool_choice", "invalid_value")
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise Invalid(f"Invalid value for 'tool_choice': function '{name}' not found in 'tools'.", "tool_choice")
    elif choice not in (None, "auto", "none", "required"):
        raise Invalid(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
            "invalid_value",
        )
    if choice == "none" or last_role == "tool":
        return None
    chosen: dict[str, Any] = functions[0]
    return chosen


def _mentions_json(messages: list[Any]) -> bool:
    for msg in messages:
        content = msg.get("content")
        texts = [content] if isinstance(content, str) else [p.get("text") for p in content or [] if isinstance(p, dict)]
        if any(isinstance(t, str) and "json" in t.lower() for t in texts):
            return True
    return False


def _response_format(body: dict[str, Any], chat: _Chat) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    ftype = fmt.get("type") if isinstance(fmt, dict) else None
    if ftype == "text":
        return
    if ftype == "json_object":
        if not _mentions_json(body["messages"]):
            raise Invalid(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                "messages",
            )
        chat.json = ftype
        return
    if ftype != "json_schema":
        raise Invalid(
            f"Invalid value: '{ftype}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
            "response_format.type",
            "invalid_value",
        )
    spec = fmt.get("json_schema")
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str):
        raise Invalid(
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
            "missing_required_parameter",
        )
    schema = spec.get("schema", {})
    if spec.get("strict") is True:
        problem = strict_problem(schema)
        if problem:
            raise Invalid(f"Invalid schema for response_format '{name}': {problem}", "response_format", "invalid_value")
    chat.json, chat.schema = ftype, schema


def _chat_validate(body: Any) -> _Chat:
    """The validated chat request, or raise Invalid."""
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
    max_tokens = positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = positive_int(body, "max_tokens")
    chat = _Chat(0, max_tokens, False, False)
    words = 0
    for i, msg in enumerate(messages):
        words += _message_tokens(i, msg, chat)
    if chat.pending:
        raise Invalid(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(chat.pending)}",
            f"messages.[{len(messages) - 1}].role",
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Invalid("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    chat.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise Invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        if isinstance(options, dict):
            chat.include_usage = options.get("include_usage") is True
    tools = body.get("tools")
    if tools is not None:
        words += _function_tools(tools)
    if tools is not None or "tool_choice" in body:
        chat.tool = _chosen_function(tools or [], body.get("tool_choice"), messages[-1]["role"])
    if "response_format" in body:
        _response_format(body, chat)
    if "n" in body:
        n = positive_int(body, "n")
        if n is not None and n > 128:
            raise Invalid(
                f"Invalid 'n': integer above maximum value. Expected a value <= 128, but got {n} instead.",
                "n",
                "integer_above_max_value",
            )
        chat.n = n or 1
    chat.words = max(words, 1)
    return chat


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
    if "dimensions" in body and not model.startswith("text-embedding-3"):
        raise Invalid("This model does not support specifying dimensions.", "dimensions", None)
    return texts, model, fmt, dims


# -- rich chat replies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """One choice's answer: text content or a tool call, with its finish reason."""

    content: str | None
    deltas: list[str]  # streamed content pieces (one per output token for text)
    call: dict[str, Any] | None
    finish_reason: str
    budget: Budget


def _answer(chat: _Chat, reasoning: int, call_id: str) -> _Answer:
    if chat.tool is not None:
        budget = plan_budget(chat.max_tokens, reasoning, TOOL_CALL_TOKENS)
        arguments = dumps(sample_for(chat.tool.get("parameters", {})))
        call = {"id": call_id, "type": "function", "function": {"name": chat.tool["name"], "arguments": arguments}}
        return _Answer(None, split_pieces(arguments), call, "length" if budget.truncated else "tool_calls", budget)
    if chat.json == "json_schema":
        budget = plan_budget(chat.max_tokens, reasoning, TOOL_CALL_TOKENS)
        text = dumps(sample_for(chat.schema))
        if budget.truncated:
            text = text[: len(text) * budget.answer // TOOL_CALL_TOKENS]
        return _Answer(text, split_pieces(text), None, "length" if budget.truncated else "stop", budget)
    budget = plan_budget(chat.max_tokens, reasoning, MAX_OUTPUT)
    if chat.json == "json_object":
        text = dumps({"reply": reply_words(budget.answer)})
        deltas = split_pieces(text, max(budget.answer, 1))
    else:
        text = reply_words(budget.answer)
        deltas = list(DELTA_TEXT[: budget.answer])
    return _Answer(text, deltas, None, "length" if budget.truncated else "stop", budget)


# -- handlers --------------------------------------------------------------------------


class OpenAIAPI:
    """Handlers of the OpenAI chat, embeddings and models routes, logging to one request log;
    the Responses and audio handlers use its :meth:`prologue`."""

    def __init__(self, log: RequestLog, ids: Ids, cache: PromptCache | None = None) -> None:
        self.log = log
        self.ids = ids
        self.cache = cache if cache is not None else PromptCache()

    async def prologue(self, request: web.Request, body: Any) -> tuple[LogRecord, Behaviour, web.Response | None]:
        """Log the request, wait out the key's delay; the refusal to send, if the key has one."""
        key = bearer(request)
        record, behaviour, refusal = await api_prologue(self.log, request, "openai", key, body)
        if refusal is None:
            return record, behaviour, None
        if refusal == "invalid" and key:
            return record, behaviour, _invalid_key(key)
        return record, behaviour, json_response(*_REFUSALS[refusal])

    def _cached(self, b: Behaviour, body: dict[str, Any], words: int, key: str | None) -> int:
        if b.cached:
            return words // 2
        if words < CACHE_MIN_TOKENS:
            return 0
        scratch = _Chat(0, None, False, False)
        parts: list[tuple[Any, int]] = [(tool, tool_tokens(tool)) for tool in body.get("tools") or []]
        parts.extend((msg, _message_tokens(i, msg, scratch)) for i, msg in enumerate(body["messages"]))
        return auto_cached(self.cache, (key, body["model"]), parts, words)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, b, early = await self.prologue(request, body)
        if early is not None:
            return finish(record, early)
        try:
            chat = _chat_validate(body)
            reasoning = reasoning_tokens_for(body["model"], body.get("reasoning_effort"), "reasoning_effort")
        except Invalid as exc:
            return finish(record, invalid_response(exc))
        words = chat.words
        cached = self._cached(b, body, words, record.key_id)
        if not chat.plain:
            return await self._rich(request, record, b, body, chat, reasoning, cached)
        if reasoning:
            budget = plan_budget(chat.max_tokens, reasoning, MAX_OUTPUT)
            out, truncated = budget.answer, budget.truncated
        else:
            reply = plan_reply(words, chat.max_tokens, b)
            out, truncated = reply.output_tokens, reply.truncated
        finish_reason = "length" if truncated else "stop"
        model_json = dumps(body["model"])
        cid = self.ids.next("chatcmpl-sbx")
        created = int(time.time())
        headers = {"Content-Type": JSON_CT, "x-request-id": self.ids.next("req_")}
        usage = _usage_json(words, out + reasoning, cached, chat.audio, reasoning)

        if not chat.stream:
            payload = (_COMPLETION_TMPL % (cid, created, model_json, TEXT_JSON[out], finish_reason, usage)).encode()
            return await send_body(request, record, b, payload, headers)

        usage_null = ',"usage":null' if chat.include_usage else ""
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
        ] or [
            f'{prefix}[{{"index":0,"delta":{{{_ROLE}"content":""}},"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n'.encode()
        ]
        tail = (
            f'{prefix}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish_reason}"}}]{usage_null}}}\n\n'
        ).encode()
        if chat.include_usage:
            tail += f'{prefix}[],"usage":{usage}}}\n\n'.encode()
        tail += b"data: [DONE]\n\n"
        return await send_stream(
            request, record, b, headers, head=b"", deltas=deltas, tail=tail, malformed=_MALFORMED_SSE
        )

    async def _rich(
        self,
        request: web.Request,
        record: LogRecord,
        b: Behaviour,
        body: dict[str, Any],
        chat: _Chat,
        reasoning: int,
        cached: int,
    ) -> web.StreamResponse:
        """Tool calls, JSON output or several choices: built per request."""
        answers = [_answer(chat, reasoning, self.ids.next("call_sbx")) for _ in range(chat.n)]
        completion = sum(a.budget.output for a in answers)
        usage = _usage_json(chat.words, completion, cached, chat.audio, sum(a.budget.reasoning for a in answers))
        cid = self.ids.next("chatcmpl-sbx")
        created = int(time.time())
        headers = {"Content-Type": JSON_CT, "x-request-id": self.ids.next("req_")}
        model = body["model"]
        if not chat.stream:
            choices = []
            for index, a in enumerate(answers):
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": a.content,
                    "refusal": None,
                    "annotations": [],
                }
                if a.call is not None:
                    message["tool_calls"] = [a.call]
                choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": a.finish_reason})
            completion_body = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": "@usage",
                "service_tier": "default",
                "system_fingerprint": "fp_sandbox",
            }
            payload = dumps(completion_body).replace('"@usage"', usage, 1).encode()
            return await send_body(request, record, b, payload, headers)

        head = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_sandbox",
        }
        extra = {"usage": None} if chat.include_usage else {}

        def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return f"data: {dumps({**head, 'choices': [choice], **extra})}\n\n".encode()

        pieces: list[bytes] = []
        tail = b""
        for index, a in enumerate(answers):
            if a.call is not None:
                function = a.call["function"]
                opening = {
                    "index": 0,
                    "id": a.call["id"],
                    "type": "function",
                    "function": {"name": function["name"], "arguments": ""},
                }
                pieces.append(
                    chunk(index, {"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None})
                )
                pieces.extend(
                    chunk(index, {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in a.deltas
                )
            else:
                pieces.append(chunk(index, {"role": "assistant", "content": "", "refusal": None}))
                pieces.extend(chunk(index, {"content": p}) for p in a.deltas)
            tail += chunk(index, {}, a.finish_reason)
        if chat.include_usage:
            tail += f"data: {dumps({**head, 'choices': [], 'usage': '@usage'})}\n\n".replace('"@usage"', usage).encode()
        tail += b"data: [DONE]\n\n"
        return await send_stream(
            request, record, b, headers, head=b"", deltas=pieces, tail=tail, malformed=_MALFORMED_SSE
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, b, early = await self.prologue(request, body)
        if early is not None:
            return finish(record, early)
        try:
            texts, model, fmt, dims = _embeddings_validate(body)
        except Invalid as exc:
            return finish(record, invalid_response(exc))
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
        headers = {"Content-Type": JSON_CT, "x-request-id": self.ids.next("req_")}
        return await send_body(request, record, b, payload, headers)

    async def models(self, request: web.Request) -> web.StreamResponse:
        record, _b, early = await self.prologue(request, None)
        if early is not None:
            return finish(record, early)
        return finish(record, json_response(_MODELS_BODY))

    async def model(self, request: web.Request) -> web.StreamResponse:
        record, _b, early = await self.prologue(request, None)
        if early is not None:
            return finish(record, early)
        model_id = request.match_info["model_id"]
        found = _MODEL_OBJECTS.get(model_id)
        if found is None:
            return finish(record, model_not_found(model_id))
        return finish(record, json_response(dumps(found).encode()))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            error_body(f"Invalid URL ({request.method} {request.path})", "invalid_request_error", None),
            404,
        )
