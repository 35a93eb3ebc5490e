"""The sandbox's OpenAI Responses API: ``POST /openai/v1/responses``, plain and streamed (the real
event sequence, with ``sequence_number``), so the openai SDK's ``responses.create`` /
``responses.stream`` / ``responses.parse`` work unchanged.

Usage: ``input_tokens`` = words of ``instructions`` and of every text in ``input`` (a string, or
message items' text parts and ``function_call_output`` outputs), plus
:data:`~sandbox.media.IMAGE_TOKENS` per ``input_image``, :data:`~sandbox.media.AUDIO_INPUT_TOKENS`
per ``input_audio``, :data:`~sandbox.replies.TOOL_CALL_TOKENS` per ``function_call`` item and
:func:`~sandbox.replies.tool_tokens` per tool; ``cached_tokens`` as in chat completions (the
``cached`` word, or the automatic cache for prompts of 1,024 tokens and more).
``output_tokens`` = ``R`` reasoning tokens (gpt-5* and o-series, by ``reasoning.effort``) plus
the answer: 12 reply words, or :data:`~sandbox.replies.TOOL_CALL_TOKENS` for a function call or
a json_schema output. ``max_output_tokens`` (at least 16, as the real API) caps the sum; a capped
response is ``incomplete`` with ``reason: max_output_tokens``.

A function call is answered when function tools are offered, ``tool_choice`` is not ``none``
and the last input item is not a ``function_call_output``; its arguments come from the tool's
``parameters`` (:mod:`sandbox.schema`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from .behaviour import Behaviour
from .media import AUDIO_INPUT_TOKENS
from .openai import (
    OpenAIAPI,
    auto_cached,
    image_tokens,
    invalid_response,
    plan_budget,
    positive_int,
    reasoning_tokens_for,
)
from .replies import DELTA_TEXT, MAX_OUTPUT, TOOL_CALL_TOKENS, reply_words, tool_tokens
from .requestlog import LogRecord
from .schema import sample_for, split_pieces, strict_problem
from .wire import JSON_CT, Invalid, dumps, finish, read_json, send_body, send_stream

__all__ = ["MIN_OUTPUT_TOKENS", "ResponsesAPI"]

MIN_OUTPUT_TOKENS: Final = 16
_MALFORMED_SSE: Final = b'event: response.created\ndata: {"type": "response.created", "resp\n\n'
_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text", "refusal"})
_ROLES: Final = frozenset({"user", "assistant", "system", "developer"})


@dataclass(slots=True)
class _Ask:
    """A validated Responses request: its input tokens and what the reply must hold."""

    words: int = 0
    tool: dict[str, Any] | None = None
    json: str | None = None
    schema: Any = None
    parts: list[tuple[Any, int]] = field(default_factory=list)  # (input item, tokens), for the cache


def _part_tokens(part: Any, where: str) -> int:
    if isinstance(part, str):
        return len(part.split())
    ptype = part.get("type") if isinstance(part, dict) else None
    if ptype in _TEXT_PARTS:
        text = part.get("text", part.get("refusal"))
        return len(text.split()) if isinstance(text, str) else 0
    if ptype == "input_image":
        if "file_id" in part and "image_url" not in part:
            return image_tokens("https://files.sandbox/" + str(part["file_id"]), f"{where}.file_id")
        return image_tokens(part.get("image_url"), f"{where}.image_url")
    if ptype == "input_audio":
        return AUDIO_INPUT_TOKENS
    if ptype == "input_file":
        return 0
    raise Invalid(
        f"Invalid value: '{ptype}'. Supported values are: 'input_text', 'input_image', 'input_file' and 'input_audio'.",
        f"{where}.type",
        "invalid_value",
    )


def _content_tokens(content: Any, where: str) -> int:
    if isinstance(content, str):
        return len(content.split())
    if not isinstance(content, list):
        raise Invalid(f"Invalid type for '{where}': expected a string or an array.", where, "invalid_type")
    return sum(_part_tokens(part, f"{where}[{j}]") for j, part in enumerate(content))


def _item_tokens(i: int, item: Any, calls: set[str], chained: bool) -> int:
    where = f"input[{i}]"
    if not isinstance(item, dict):
        raise Invalid(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
    itype = item.get("type", "message")
    if itype == "message":
        if item.get("role") not in _ROLES:
            raise Invalid(
                f"Invalid value: '{item.get('role')}'. Supported values are: 'user', 'assistant', 'system', and "
                "'developer'.",
                f"{where}.role",
                "invalid_value",
            )
        return _content_tokens(item.get("content"), f"{where}.content")
    if itype == "function_call":
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not isinstance(item.get("name"), str):
            raise Invalid(
                f"Missing required parameter: '{where}.call_id'.", f"{where}.call_id", "missing_required_parameter"
            )
        calls.add(call_id)
        return TOOL_CALL_TOKENS
    if itype == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise Invalid(
                f"Missing required parameter: '{where}.call_id'.", f"{where}.call_id", "missing_required_parameter"
            )
        if call_id not in calls and not chained:
            raise Invalid(f"No tool call found for function call output with call_id {call_id}.", "input")
        return _content_tokens(item.get("output", ""), f"{where}.output")
    if itype in ("reasoning", "item_reference"):
        return 0
    raise Invalid(f"Invalid value: '{itype}'.", f"{where}.type", "invalid_value")


def _function_tool(tools: list[Any], choice: Any, last_is_output: bool) -> dict[str, Any] | None:
    functions = [t for t in tools if t.get("type") == "function"]
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        functions = [t for t in functions if t.get("name") == name]
        if not functions:
            raise Invalid(f"Tool choice '{name}' not found in 'tools' parameter.", "tool_choice")
    elif choice not in (None, "auto", "none", "required") and not isinstance(choice, dict):
        raise Invalid(
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
            "invalid_value",
        )
    if choice == "none" or last_is_output or not functions:
        return None
    chosen: dict[str, Any] = functions[0]
    return chosen


def _tools_tokens(tools: Any) -> int:
    if not isinstance(tools, list):
        raise Invalid("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    tokens = 0
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise Invalid(
                f"Missing required parameter: 'tools[{k}].type'.", f"tools[{k}].type", "missing_required_parameter"
            )
        if tool["type"] == "function":
            name = tool.get("name")
            if not isinstance(name, str):
                raise Invalid(
                    f"Missing required parameter: 'tools[{k}].name'.", f"tools[{k}].name", "missing_required_parameter"
                )
            if tool.get("strict") is True:
                problem = strict_problem(tool.get("parameters"))
                if problem:
                    raise Invalid(
                        f"Invalid schema for function '{name}': {problem}",
                        f"tools[{k}].parameters",
                        "invalid_function_parameters",
                    )
        tokens += tool_tokens(tool)
    return tokens


def _mentions_json(body: dict[str, Any]) -> bool:
    return "json" in dumps([body.get("instructions"), body.get("input")]).lower()


def _text_format(body: dict[str, Any], ask: _Ask) -> None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return
    ftype = fmt.get("type") if isinstance(fmt, dict) else None
    if ftype == "text":
        return
    if ftype == "json_object":
        if not _mentions_json(body):
            raise Invalid(
                "Response input messages must contain the word 'json' in some form to use 'text.format' of type "
                "'json_object'.",
                "input",
            )
        ask.json = ftype
        return
    if ftype != "json_schema":
        raise Invalid(
            f"Invalid value: '{ftype}'. Supported values are: 'text', 'json_object', and 'json_schema'.",
            "text.format.type",
            "invalid_value",
        )
    name = fmt.get("name")
    if not isinstance(name, str):
        raise Invalid(
            "Missing required parameter: 'text.format.name'.", "text.format.name", "missing_required_parameter"
        )
    schema = fmt.get("schema", {})
    if fmt.get("strict") is True:
        problem = strict_problem(schema)
        if problem:
            raise Invalid(
                f"Invalid schema for response_format '{name}': {problem}", "text.format.schema", "invalid_value"
            )
    ask.json, ask.schema = ftype, schema


def _validate(body: Any) -> _Ask:
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    ask = _Ask()
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise Invalid("Invalid type for 'instructions': expected a string.", "instructions", "invalid_type")
        ask.words += len(instructions.split())
    tools = body.get("tools")
    if tools is not None:
        ask.parts.append((tools, _tools_tokens(tools)))
    raw = body.get("input")
    last_is_output = False
    if isinstance(raw, str):
        ask.parts.append((raw, len(raw.split())))
    elif isinstance(raw, list):
        calls: set[str] = set()
        chained = body.get("previous_response_id") is not None
        for i, item in enumerate(raw):
            ask.parts.append((item, _item_tokens(i, item, calls, chained)))
        last_is_output = bool(raw) and raw[-1].get("type") == "function_call_output"
    elif raw is not None:
        raise Invalid("Invalid type for 'input': expected a string or an array.", "input", "invalid_type")
    elif body.get("previous_response_id") is None and body.get("prompt") is None:
        raise Invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    ask.words = max(1, ask.words + sum(tokens for _, tokens in ask.parts))
    if tools is not None:
        ask.tool = _function_tool(tools, body.get("tool_choice"), last_is_output)
    if "text" in body:
        _text_format(body, ask)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Invalid("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    return ask


@dataclass(slots=True)
class _Events:
    """Server-sent events numbered in the order they are built."""

    sequence: int = 0

    def __call__(self, etype: str, **fields: Any) -> bytes:
        data = {"type": etype, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return f"event: {etype}\ndata: {dumps(data)}\n\n".encode()


class ResponsesAPI:
    """The ``/openai/v1/responses`` handler (authentication, errors and cache shared with chat)."""

    def __init__(self, openai: OpenAIAPI) -> None:
        self.openai = openai
        self.ids = openai.ids

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, b, early = await self.openai.prologue(request, body)
        if early is not None:
            return finish(record, early)
        try:
            ask = _validate(body)
            max_output = positive_int(body, "max_output_tokens", MIN_OUTPUT_TOKENS)
            reasoning_spec = body.get("reasoning")
            effort = reasoning_spec.get("effort") if isinstance(reasoning_spec, dict) else None
            reasoning = reasoning_tokens_for(body["model"], effort, "reasoning.effort")
        except Invalid as exc:
            return finish(record, invalid_response(exc))
        return await self._answer(request, record, b, body, ask, max_output, reasoning, effort)

    async def _answer(
        self,
        request: web.Request,
        record: LogRecord,
        b: Behaviour,
        body: dict[str, Any],
        ask: _Ask,
        max_output: int | None,
        reasoning: int,
        effort: Any,
    ) -> web.StreamResponse:
        if b.cached:
            cached = ask.words // 2
        else:
            cached = auto_cached(self.openai.cache, (record.key_id, body["model"]), ask.parts, ask.words)
        structured = ask.tool is not None or ask.json == "json_schema"
        budget = plan_budget(max_output, reasoning, TOOL_CALL_TOKENS if structured else MAX_OUTPUT)
        status = "incomplete" if budget.truncated else "completed"
        created = int(time.time())
        resp_id = self.ids.next("resp_sbx")
        output: list[dict[str, Any]] = []
        if reasoning:
            output.append({"id": self.ids.next("rs_sbx"), "type": "reasoning", "summary": []})
        deltas: list[str]
        if ask.tool is not None:
            arguments = dumps(sample_for(ask.tool.get("parameters", {})))
            deltas = split_pieces(arguments)
            item: dict[str, Any] = {
                "id": self.ids.next("fc_sbx"),
                "type": "function_call",
                "status": status,
                "arguments": arguments,
                "call_id": self.ids.next("call_sbx"),
                "name": ask.tool["name"],
            }
        else:
            if ask.json == "json_schema":
                text = dumps(sample_for(ask.schema))
                if budget.truncated:
                    text = text[: len(text) * budget.answer // TOOL_CALL_TOKENS]
                deltas = split_pieces(text)
            elif ask.json == "json_object":
                text = dumps({"reply": reply_words(budget.answer)})
                deltas = split_pieces(text, max(budget.answer, 1))
            else:
                text = reply_words(budget.answer)
                deltas = list(DELTA_TEXT[: budget.answer])
            item = {
                "id": self.ids.next("msg_sbx"),
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        output.append(item)
        usage = {
            "input_tokens": ask.words,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": budget.output,
            "output_tokens_details": {"reasoning_tokens": budget.reasoning},
            "total_tokens": ask.words + budget.output,
        }
        text_spec: dict[str, Any] = body["text"] if isinstance(body.get("text"), dict) else {}
        response: dict[str, Any] = {
            "id": resp_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if budget.truncated else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": max_output,
            "max_tool_calls": None,
            "model": body["model"],
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": effort, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium", **text_spec},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": body.get("metadata") or {},
        }
        headers = {"Content-Type": JSON_CT, "x-request-id": self.ids.next("req_")}
        if not body.get("stream"):
            return await send_body(request, record, b, dumps(response).encode(), headers)
        return await self._stream(request, record, b, headers, response, deltas)

    async def _stream(
        self,
        request: web.Request,
        record: LogRecord,
        b: Behaviour,
        headers: dict[str, str],
        response: dict[str, Any],
        deltas: list[str],
    ) -> web.StreamResponse:
        event = _Events()
        *before, item = response["output"]
        index = len(before)
        pending = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
        head = event("response.created", response=pending) + event("response.in_progress", response=pending)
        for i, done in enumerate(before):
            head += event("response.output_item.added", output_index=i, item=done)
            head += event("response.output_item.done", output_index=i, item=done)
        item_id = item["id"]
        if item["type"] == "function_call":
            head += event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            pieces = [
                event("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=d)
                for d in deltas
            ]
            tail = event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
        else:
            part = item["content"][0]
            head += event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            head += event(
                "response.content_part.added",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part={**part, "text": ""},
            )
            pieces = [
                event(
                    "response.output_text.delta",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    delta=d,
                    logprobs=[],
                )
                for d in deltas
            ]
            tail = event(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
            tail += event("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part)
        tail += event("response.output_item.done", output_index=index, item=item)
        final = "response.completed" if response["status"] == "completed" else "response.incomplete"
        tail += event(final, response=response)
        return await send_stream(
            request, record, b, headers, head=head, deltas=pieces, tail=tail, malformed=_MALFORMED_SSE
        )
