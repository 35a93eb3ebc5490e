"""OpenAI Chat Completions ⇄ Anthropic Messages, for the universal surface `/v1/chat/completions`.

Pure functions: the gateway calls `chat_to_anthropic` on the client's body, sends the result to
Anthropic, and turns the answer back with `anthropic_to_chat` (JSON) or `AnthropicChatStream`
(SSE). The one rule: nothing the client sends is silently dropped. A parameter — or a value of
one — that Anthropic cannot express raises `Untranslatable` naming it (`n`,
`messages[2].content[0].type`), which the gateway answers as a 400. A body that is not a valid
Chat Completions request raises the same error: to the client both are "this parameter, fix it".

Choices a reader may question:
- `image_url.detail` is accepted whatever its value: at OpenAI it only picks the resolution the
  image is billed and seen at; Anthropic sizes every image itself, and refusing "low"/"high"
  would break clients that set it everywhere for cost reasons.
- JSON output (`response_format` json_schema / json_object) is a forced tool whose input is the
  answer; the response side needs that tool's name (`json_tool_name`) to turn it back into
  message content. Client tools beside it are refused: forcing the JSON tool takes away the
  model's choice to call theirs, and leaving the choice open lets it answer in prose.
- Empty text (an assistant turn with `content: ""` beside its tool calls) adds no block:
  Anthropic refuses empty text blocks, and an empty string says nothing to the model.
- A trailing assistant message is sent as Anthropic's prefill: the model continues that text
  (models without prefill refuse it with a 400 that says so).
- `temperature` and `top_p` are sent as given; the models that dropped sampling parameters
  refuse them with a 400 naming the parameter. This module knows no model's quirks.
- Thinking blocks in an answer (models that think unasked) are left out: Chat Completions has
  no place for them, and their tokens are already in `completion_tokens`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

JsonDict = dict[str, Any]

# The media types Anthropic's image blocks accept.
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

# The forced tool's name for `response_format: {"type": "json_object"}` (json_schema names its own).
JSON_OBJECT_TOOL = "json_object"

_DATA_URL = re.compile(r"data:(?P<media>[^;,]+);base64,(?P<data>.+)", re.DOTALL)


class Untranslatable(Exception):
    """A request parameter (dotted path `param`) that an Anthropic request cannot express."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class StreamError(Exception):
    """Anthropic sent an `error` event mid-stream; `payload` is its `{"type": "error", "error": …}`."""

    def __init__(self, payload: JsonDict) -> None:
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(message if isinstance(message, str) else "stream error")
        self.payload = payload


# --- Request: OpenAI chat → Anthropic messages ------------------------------------------------


def _neutral(value: object, *neutral: object) -> bool:
    """True when `value` is one of the values that ask for nothing (bools are not numbers here)."""
    return any(type(value) is type(n) and value == n for n in neutral)


# Parameters Anthropic has no equivalent for: accepted only at the value that asks for nothing.
_UNSUPPORTED: dict[str, tuple[Callable[[object], bool], str]] = {
    "n": (
        lambda v: _neutral(v, 1),
        "Anthropic models return one choice; send n=1 (or leave it out), or call an OpenAI model.",
    ),
    "logprobs": (lambda v: v is False, "Anthropic models don't return log probabilities; call an OpenAI model."),
    "top_logprobs": (lambda v: False, "Anthropic models don't return log probabilities; call an OpenAI model."),
    "logit_bias": (lambda v: v == {}, "Anthropic models have no logit bias; leave logit_bias out."),
    "presence_penalty": (lambda v: _neutral(v, 0, 0.0), "Anthropic models have no presence penalty; send 0."),
    "frequency_penalty": (lambda v: _neutral(v, 0, 0.0), "Anthropic models have no frequency penalty; send 0."),
    "seed": (lambda v: False, "Anthropic models can't be seeded; leave seed out."),
    "reasoning_effort": (
        lambda v: False,
        "Extended thinking isn't translated; call /anthropic/v1/messages with `thinking`, or leave it out.",
    ),
    "audio": (lambda v: False, "Anthropic models don't speak; leave audio out."),
    "modalities": (lambda v: v == ["text"], "Anthropic models answer in text only; send ['text'] or leave it out."),
    "prediction": (lambda v: False, "Anthropic models have no predicted outputs; leave prediction out."),
    "web_search_options": (
        lambda v: False,
        "Web search isn't translated; call /anthropic/v1/messages with Anthropic's web search tool.",
    ),
    "store": (lambda v: v is False, "Anthropic doesn't store completions; leave store out."),
    "metadata": (lambda v: v == {}, "OpenAI's metadata has no Anthropic equivalent; use `user` for a user id."),
    "service_tier": (lambda v: v == "auto", "Anthropic models take service_tier 'auto' only here."),
    "functions": (lambda v: False, "functions is deprecated; send tools instead."),
    "function_call": (lambda v: False, "function_call is deprecated; send tool_choice instead."),
}

# Keys handled below, in `chat_to_anthropic`.
_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    }
)


def _present(obj: Mapping[str, Any]) -> JsonDict:
    """The keys of `obj` with a value: OpenAI reads an explicit null as "not sent"."""
    return {key: value for key, value in obj.items() if value is not None}


def _only(obj: Mapping[str, Any], allowed: frozenset[str] | set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise Untranslatable(_join(path, key), "Niyra can't translate this field for Anthropic models.")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(value: object, path: str) -> JsonDict:
    if not isinstance(value, dict):
        raise Untranslatable(path, "must be an object.")
    return _present(value)


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise Untranslatable(path, "must be an array.")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise Untranslatable(path, "must be a string.")
    return value


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise Untranslatable(path, "must be true or false.")
    return value


def _number(value: object, path: str, low: float, high: float, beyond: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Untranslatable(path, "must be a number.")
    if value < low:
        raise Untranslatable(path, f"must be at least {low:g}.")
    if value > high:
        raise Untranslatable(path, beyond)
    return value


def _positive_int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Untranslatable(path, "must be a positive integer.")
    return value


def _text_of(content: object, path: str) -> list[JsonDict]:
    """Text blocks of a string or of text-only parts (system, developer, assistant, tool)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, raw in enumerate(_list(content, path)):
        part = _object(raw, f"{path}[{j}]")
        kind = part.get("type")
        if kind != "text":
            raise Untranslatable(f"{path}[{j}].type", f"{kind!r} parts can't go here; send text.")
        _only(part, {"type", "text"}, f"{path}[{j}]")
        text = _string(part.get("text"), f"{path}[{j}].text")
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _image(part: JsonDict, path: str) -> JsonDict:
    _only(part, {"type", "image_url"}, path)
    image = _object(part.get("image_url"), f"{path}.image_url")
    _only(image, {"url", "detail"}, f"{path}.image_url")
    if "detail" in image and image["detail"] not in ("auto", "low", "high"):
        raise Untranslatable(f"{path}.image_url.detail", "must be 'auto', 'low' or 'high'.")
    url = _string(image.get("url"), f"{path}.image_url.url")
    if url.startswith("https://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if not url.startswith("data:"):
        raise Untranslatable(f"{path}.image_url.url", "send an https:// URL or a data:<type>;base64,… URL.")
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise Untranslatable(f"{path}.image_url.url", "a data URL must read data:<media type>;base64,<data>.")
    media = match["media"].lower()
    if media not in IMAGE_MEDIA_TYPES:
        raise Untranslatable(
            f"{path}.image_url.url", f"Anthropic models take JPEG, PNG, GIF or WebP images, not {media}."
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": match["data"]}}


def _user_content(content: object, path: str) -> list[JsonDict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, raw in enumerate(_list(content, path)):
        where = f"{path}[{j}]"
        part = _object(raw, where)
        kind = part.get("type")
        if kind == "text":
            _only(part, {"type", "text"}, where)
            text = _string(part.get("text"), f"{where}.text")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image(part, where))
        elif kind == "input_audio":
            raise Untranslatable(f"{where}.type", "Anthropic models don't take audio input; call an OpenAI model.")
        elif kind == "file":
            raise Untranslatable(f"{where}.type", "file parts aren't translated; send the text, or images.")
        else:
            raise Untranslatable(f"{where}.type", f"unknown content part type {kind!r}.")
    return blocks


def _tool_use(raw: object, path: str) -> JsonDict:
    call = _object(raw, path)
    if call.get("type", "function") != "function":
        raise Untranslatable(f"{path}.type", "only function tool calls translate.")
    _only(call, {"id", "type", "function"}, path)
    function = _object(call.get("function"), f"{path}.function")
    _only(function, {"name", "arguments"}, f"{path}.function")
    arguments = _string(function.get("arguments"), f"{path}.function.arguments")
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise Untranslatable(f"{path}.function.arguments", "must be a JSON object, as Anthropic tool input is.")
    return {
        "type": "tool_use",
        "id": _string(call.get("id"), f"{path}.id"),
        "name": _string(function.get("name"), f"{path}.function.name"),
        "input": parsed,
    }


def _tool_result(message: JsonDict, path: str) -> JsonDict:
    _only(message, {"role", "content", "tool_call_id"}, path)
    result: JsonDict = {
        "type": "tool_result",
        "tool_use_id": _string(message.get("tool_call_id"), f"{path}.tool_call_id"),
    }
    content = message.get("content")
    if isinstance(content, str):
        if content:
            result["content"] = content
    else:
        blocks = _text_of(content, f"{path}.content")
        if blocks:
            result["content"] = blocks
    return result


def _messages(raw_messages: object) -> tuple[list[JsonDict], list[JsonDict]]:
    """(system blocks, alternating messages). Same-role neighbours merge: Anthropic wants turns."""
    system: list[JsonDict] = []
    turns: list[JsonDict] = []
    for i, raw in enumerate(_list(raw_messages, "messages")):
        path = f"messages[{i}]"
        message = _object(raw, path)
        role = message.get("role")
        if "name" in message:
            raise Untranslatable(f"{path}.name", "Anthropic messages have no participant names; leave name out.")
        if role in ("system", "developer"):
            _only(message, {"role", "content"}, path)
            system.extend(_text_of(message.get("content"), f"{path}.content"))
            continue
        if role == "user":
            _only(message, {"role", "content"}, path)
            turn_role, blocks = "user", _user_content(message.get("content"), f"{path}.content")
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(message, path)]
        elif role == "assistant":
            _only(message, {"role", "content", "tool_calls"}, path)
            blocks = []
            content = message.get("content")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    if isinstance(part, dict) and part.get("type") == "refusal":
                        raise Untranslatable(f"{path}.content[{j}].type", "refusal parts have no Anthropic form.")
            if content is not None:
                blocks = _text_of(content, f"{path}.content")
            for j, call in enumerate(_list(message.get("tool_calls", []), f"{path}.tool_calls")):
                blocks.append(_tool_use(call, f"{path}.tool_calls[{j}]"))
            turn_role = "assistant"
        elif role == "function":
            raise Untranslatable(f"{path}.role", "the function role is deprecated; send tool messages.")
        else:
            raise Untranslatable(f"{path}.role", f"unknown role {role!r}.")
        if not blocks:
            raise Untranslatable(f"{path}.content", "is empty; Anthropic needs some content in every message.")
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    if not turns:
        raise Untranslatable("messages", "needs at least one user message besides system and developer ones.")
    return system, turns


def _tool(raw: object, path: str) -> JsonDict:
    spec = _object(raw, path)
    if spec.get("type") != "function":
        raise Untranslatable(f"{path}.type", f"only function tools translate, not {spec.get('type')!r}.")
    _only(spec, {"type", "function"}, path)
    function = _object(spec.get("function"), f"{path}.function")
    _only(function, {"name", "description", "parameters", "strict"}, f"{path}.function")
    tool: JsonDict = {"name": _string(function.get("name"), f"{path}.function.name")}
    if "description" in function:
        tool["description"] = _string(function["description"], f"{path}.function.description")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise Untranslatable(
            f"{path}.function.parameters", "Anthropic tool input is an object: the schema's type is 'object'."
        )
    tool["input_schema"] = parameters
    # Anthropic's strict tool use is the same promise: input that matches the schema.
    if _boolean(function.get("strict", False), f"{path}.function.strict"):
        tool["strict"] = True
    return tool


def _tool_choice(value: object) -> JsonDict:
    if value == "auto":
        return {"type": "auto"}
    if value == "none":
        return {"type": "none"}
    if value == "required":
        return {"type": "any"}
    choice = _object(value, "tool_choice")
    if choice.get("type") != "function":
        raise Untranslatable("tool_choice.type", "send 'auto', 'none', 'required' or a function choice.")
    _only(choice, {"type", "function"}, "tool_choice")
    function = _object(choice.get("function"), "tool_choice.function")
    _only(function, {"name"}, "tool_choice.function")
    return {"type": "tool", "name": _string(function.get("name"), "tool_choice.function.name")}


def _json_format(body: Mapping[str, Any]) -> JsonDict | None:
    """The forced tool that carries JSON output, or None when the answer is plain text."""
    if body.get("response_format") is None:
        return None
    response_format = _object(body["response_format"], "response_format")
    kind = response_format.get("type")
    if kind == "text":
        _only(response_format, {"type"}, "response_format")
        return None
    if kind == "json_object":
        _only(response_format, {"type"}, "response_format")
        return {
            "name": JSON_OBJECT_TOOL,
            "description": "Give your answer as this tool's input: one JSON object.",
            "input_schema": {"type": "object"},
        }
    if kind != "json_schema":
        raise Untranslatable("response_format.type", "must be 'text', 'json_object' or 'json_schema'.")
    _only(response_format, {"type", "json_schema"}, "response_format")
    spec = _object(response_format.get("json_schema"), "response_format.json_schema")
    path = "response_format.json_schema"
    _only(spec, {"name", "description", "schema", "strict"}, path)
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise Untranslatable(f"{path}.schema", "Anthropic can return JSON objects only: the schema's type is 'object'.")
    tool: JsonDict = {
        "name": _string(spec.get("name"), f"{path}.name"),
        "description": _string(
            spec.get("description", "Give your answer as this tool's input, matching its schema."),
            f"{path}.description",
        ),
        "input_schema": schema,
    }
    if _boolean(spec.get("strict", False), f"{path}.strict"):
        tool["strict"] = True
    return tool


def json_tool_name(body: Mapping[str, Any]) -> str | None:
    """The forced tool that carries a JSON answer for this OpenAI request (None: plain text).

    The gateway passes it to `anthropic_to_chat` / `AnthropicChatStream` as `json_tool`.
    """
    tool = _json_format(_present(body))
    return None if tool is None else str(tool["name"])


def chat_to_anthropic(body: Mapping[str, Any], *, vendor_model: str, max_output_tokens: int) -> JsonDict:
    """The Anthropic Messages request for an OpenAI Chat Completions body, or `Untranslatable`."""
    if not isinstance(body, Mapping):
        raise Untranslatable("body", "must be a JSON object.")
    fields = _present(body)
    for key, value in fields.items():
        if key in _UNSUPPORTED:
            accepts, message = _UNSUPPORTED[key]
            if not accepts(value):
                raise Untranslatable(key, message)
        elif key not in _TRANSLATED:
            raise Untranslatable(key, "Niyra can't translate this parameter for Anthropic models.")

    system, turns = _messages(fields.get("messages"))
    request: JsonDict = {"model": vendor_model, "max_tokens": _max_tokens(fields, max_output_tokens)}
    if system:
        request["system"] = system
    request["messages"] = turns

    if "temperature" in fields:
        request["temperature"] = _number(
            fields["temperature"], "temperature", 0, 1, "Anthropic models take a temperature from 0 to 1."
        )
    if "top_p" in fields:
        request["top_p"] = _number(fields["top_p"], "top_p", 0, 1, "must be at most 1.")
    if "stop" in fields:
        stops = _stop_sequences(fields["stop"])
        if stops:
            request["stop_sequences"] = stops
    if "stream" in fields:
        request["stream"] = _boolean(fields["stream"], "stream")
    if "stream_options" in fields:
        options = _object(fields["stream_options"], "stream_options")
        _only(options, {"include_usage"}, "stream_options")
        if "include_usage" in options:
            _boolean(options["include_usage"], "stream_options.include_usage")  # the stream translator's flag
    if "user" in fields:
        request["metadata"] = {"user_id": _string(fields["user"], "user")}

    json_tool = _json_format(fields)
    tools = [_tool(spec, f"tools[{k}]") for k, spec in enumerate(_list(fields.get("tools", []), "tools"))]
    choice = _tool_choice(fields["tool_choice"]) if "tool_choice" in fields else None
    if json_tool is not None:
        if tools:
            raise Untranslatable(
                "tools", "JSON output is a forced tool for Anthropic models; it can't sit beside tools."
            )
        if choice is not None:
            raise Untranslatable(
                "tool_choice", "JSON output is a forced tool for Anthropic models; leave tool_choice out."
            )
        tools = [json_tool]
        choice = {"type": "tool", "name": json_tool["name"]}
    if "parallel_tool_calls" in fields and not _boolean(fields["parallel_tool_calls"], "parallel_tool_calls") and tools:
        choice = choice or {"type": "auto"}
        # "none" calls no tool at all, so it has nothing to serialise.
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if tools:
        request["tools"] = tools
    if choice is not None:
        request["tool_choice"] = choice
    return request


def _max_tokens(fields: JsonDict, default: int) -> int:
    given = {key: _positive_int(fields[key], key) for key in ("max_completion_tokens", "max_tokens") if key in fields}
    if len(set(given.values())) > 1:
        raise Untranslatable("max_tokens", "max_tokens and max_completion_tokens differ; send one of them.")
    return next(iter(given.values()), default)


def _stop_sequences(value: object) -> list[str]:
    if isinstance(value, str):
        items: list[tuple[str, object]] = [("stop", value)]
    else:
        items = [(f"stop[{k}]", item) for k, item in enumerate(_list(value, "stop"))]
    stops = []
    for path, item in items:
        stop = _string(item, path)
        if not stop.strip():
            raise Untranslatable(path, "Anthropic stop sequences need a character that isn't whitespace.")
        stops.append(stop)
    return stops


# --- Response: Anthropic message → OpenAI chat.completion -------------------------------------

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}


def _finish_reason(stop_reason: object, json_tool_used: bool) -> str | None:
    if stop_reason is None:
        return None
    if stop_reason == "tool_use" and json_tool_used:
        return "stop"
    return _FINISH.get(str(stop_reason), "stop")


def _int_of(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _chat_usage(input_tokens: int, cache_write: int, cache_read: int, output_tokens: int) -> JsonDict:
    prompt = input_tokens + cache_write + cache_read
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output_tokens,
        "total_tokens": prompt + output_tokens,
        "prompt_tokens_details": {"cached_tokens": cache_read},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def anthropic_to_chat(payload: Mapping[str, Any], *, model: str, json_tool: str | None = None) -> JsonDict:
    """The OpenAI `chat.completion` for an Anthropic message; `model` is the id the client sent."""
    texts: list[str] = []
    tool_calls: list[JsonDict] = []
    json_tool_used = False
    for block in payload.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use" and json_tool is not None and block.get("name") == json_tool:
            texts.append(_json_text(block.get("input", {})))
            json_tool_used = True
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": _json_text(block.get("input", {}))},
                }
            )
        # Anything else: thinking (see the module's docstring), or server tool blocks the
        # translation never asks for (web search is Untranslatable).
    message: JsonDict = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = payload.get("usage") or {}
    return {
        "id": f"chatcmpl-{payload.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(payload.get("stop_reason"), json_tool_used) or "stop",
            }
        ],
        "usage": _chat_usage(
            _int_of(usage, "input_tokens"),
            _int_of(usage, "cache_creation_input_tokens"),
            _int_of(usage, "cache_read_input_tokens"),
            _int_of(usage, "output_tokens"),
        ),
    }


class AnthropicChatStream:
    """Anthropic's SSE events in, OpenAI `chat.completion.chunk` objects out, one event at a time."""

    def __init__(self, model: str, *, include_usage: bool, json_tool: str | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self.json_tool = json_tool
        self.created = int(time.time())
        self.id = "chatcmpl-"
        self._done = False
        self._usage = {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        self._output_tokens = 0
        self._tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._json_blocks: set[int] = set()
        self._json_tool_used = False

    @property
    def done(self) -> bool:
        """True once message_stop arrived: the stream is complete."""
        return self._done

    def feed(self, event: str | None, data: Mapping[str, Any]) -> list[JsonDict]:
        """The chunks for one event (`event` is the SSE event name; `data["type"]` when absent)."""
        kind = event or data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = f"chatcmpl-{message.get('id', '')}"
            self._take_usage(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": "", "refusal": None})]
        if kind == "content_block_start":
            return self._block_start(int(data.get("index", 0)), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(data.get("index", 0)), data.get("delta") or {})
        if kind == "message_delta":
            self._take_usage(data.get("usage") or {})
            stop_reason = (data.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, _finish_reason(stop_reason, self._json_tool_used) or "stop")]
        if kind == "message_stop":
            self._done = True
            if not self.include_usage:
                return []
            usage = _chat_usage(
                self._usage["input_tokens"],
                self._usage["cache_creation_input_tokens"],
                self._usage["cache_read_input_tokens"],
                self._output_tokens,
            )
            return [{**self._base(), "choices": [], "usage": usage}]
        if kind == "error":
            raise StreamError(dict(data))
        # ping, content_block_stop, and events newer than this code carry nothing for the client.
        return []

    def _take_usage(self, usage: Mapping[str, Any]) -> None:
        """message_start reports the input; message_delta the output so far (and, lately, the input again)."""
        for key in self._usage:
            if usage.get(key) is not None:
                self._usage[key] = _int_of(usage, key)
        if usage.get("output_tokens") is not None:
            self._output_tokens = _int_of(usage, "output_tokens")

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[JsonDict]:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text") or ""
            return [self._chunk({"content": text})] if text else []
        if kind == "tool_use" and self.json_tool is not None and block.get("name") == self.json_tool:
            self._json_blocks.add(index)
            self._json_tool_used = True
            return []
        if kind == "tool_use":
            position = self._tool_index[index] = len(self._tool_index)
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        # Thinking and server tool blocks: left out, as in anthropic_to_chat.
        return []

    def _block_delta(self, index: int, delta: Mapping[str, Any]) -> list[JsonDict]:
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text") or ""
            return [self._chunk({"content": text})] if text else []
        if kind == "input_json_delta":
            partial = delta.get("partial_json") or ""
            if not partial:
                return []
            if index in self._json_blocks:
                return [self._chunk({"content": partial})]
            if index in self._tool_index:
                call = {"index": self._tool_index[index], "function": {"arguments": partial}}
                return [self._chunk({"tool_calls": [call]})]
        return []

    def _base(self) -> JsonDict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    def _chunk(self, delta: JsonDict, finish_reason: str | None = None) -> JsonDict:
        chunk = {
            **self._base(),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk


# --- Errors: Anthropic's shape → OpenAI's -----------------------------------------------------

# Anthropic error type → OpenAI (type, code), as OpenAI words the same failure.
_ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "timeout_error": ("server_error", "timeout"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
}


def anthropic_error_to_openai(status: int, payload: object) -> JsonDict:
    """OpenAI's `{"error": {...}}` for Anthropic's `{"type": "error", "error": {"type", "message"}}`.

    `status` words the error when the payload isn't Anthropic's shape (a proxy's HTML page).
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    anthropic_type = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(anthropic_type, str) and anthropic_type in _ERROR_TYPES:
        kind, code = _ERROR_TYPES[anthropic_type]
    elif status >= 500:
        kind, code = "server_error", None
    else:
        kind, code = "invalid_request_error", None
    if not isinstance(message, str) or not message:
        message = f"The provider answered with HTTP {status}."
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
