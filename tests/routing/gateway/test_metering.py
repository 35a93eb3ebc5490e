"""Metering: worst cases that bound what a provider can report, usage read from the providers'
own answers and streams (in their real shapes), and the SSE splitter at every chunk boundary."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from credits.pricing import Usage
from routing import catalog
from routing.catalog import CatalogModel
from routing.gateway import metering
from routing.gateway.metering import (
    SseEvent,
    SseSplitter,
    StreamMeter,
    Surface,
    usage_from_response,
    worst_case,
)


@pytest.fixture(autouse=True)
def _providers_are_the_sandbox() -> None:
    """Pure code: no sandbox (overrides the routing tests' autouse fixture)."""


@pytest.fixture(autouse=True)
def _books_balance() -> None:
    """Pure code: no database, so no books to check (overrides the gateway tests' fixture)."""


SONNET = catalog.resolve("claude-sonnet-4-6")
OPUS_47 = catalog.resolve("claude-opus-4-7")
GPT_41 = catalog.resolve("gpt-4.1")
GPT_4O_MINI = catalog.resolve("gpt-4o-mini")
GPT_5 = catalog.resolve("gpt-5")
GPT_5_NANO = catalog.resolve("gpt-5-nano")
EMBEDDING = catalog.resolve("text-embedding-3-small")
TTS = catalog.resolve("gpt-4o-mini-tts")
STT = catalog.resolve("gpt-4o-transcribe")

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
BIG_IMAGE = base64.b64encode(bytes(range(256)) * 4_000).decode()  # ~1.4 MB of base64


def worst(surface: Surface, body: dict[str, Any], model: CatalogModel) -> Usage:
    return worst_case(surface, body, body_bytes=len(orjson.dumps(body)), model=model)


def sse(*events: tuple[str | None, dict[str, Any] | str], crlf: bool = False) -> bytes:
    """A stream as the provider writes it: `event:` line (Anthropic, Responses), `data:` line."""
    out = b""
    for name, data in events:
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        block = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
        out += block.replace("\n", "\r\n").encode() if crlf else block.encode()
    return out


def meter_stream(surface: Surface, request: dict[str, Any], stream: bytes) -> tuple[StreamMeter, list[bool]]:
    meter = StreamMeter(surface, request)
    splitter = SseSplitter()
    flags = [meter.observe(event.data) for event in splitter.feed(stream) + splitter.flush()]
    return meter, flags


# --- Realistic streams ------------------------------------------------------------------------

ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "thinking": {"type": "enabled", "budget_tokens": 512},
    "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "stream": True,
}


def _block_delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


ANTHROPIC_START = (
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 472,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1800,
                "output_tokens": 2,
                "service_tier": "standard",
            },
        },
    },
)
ANTHROPIC_BODY = [
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
    ),
    ("ping", {"type": "ping"}),
    _block_delta(0, {"type": "thinking_delta", "thinking": "The user wants the weather."}),
    _block_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    _block_delta(1, {"type": "text_delta", "text": 'Checking. A "text_delta" in text is escaped: message_stop'}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    _block_delta(2, {"type": "input_json_delta", "partial_json": ""}),
    _block_delta(2, {"type": "input_json_delta", "partial_json": '{"city": "Par'}),
    _block_delta(2, {"type": "input_json_delta", "partial_json": 'is"}'}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
]
ANTHROPIC_END = [
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]
ANTHROPIC_STREAM = sse(ANTHROPIC_START, *ANTHROPIC_BODY, *ANTHROPIC_END)

CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4.1",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
    ],
    "max_completion_tokens": 300,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, dict[str, Any]]:
    return None, {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4.1-2025-04-14",
        "service_tier": "default",
        "system_fingerprint": "fp_b705f0c291",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


CHAT_USAGE = {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
CHAT_BODY = [
    _chunk({"role": "assistant", "content": "", "refusal": None}),
    _chunk({"content": "Checking"}),
    _chunk({"content": ' "usage": {} '}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'city": "Paris"}'}}]}),
    _chunk({}, finish="tool_calls"),
]
CHAT_USAGE_CHUNK = (
    None,
    {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4.1-2025-04-14",
        "system_fingerprint": "fp_b705f0c291",
        "choices": [],
        "usage": CHAT_USAGE,
    },
)
CHAT_STREAM = sse(*CHAT_BODY, CHAT_USAGE_CHUNK, (None, "[DONE]"))

RESPONSES_REQUEST: dict[str, Any] = {
    "model": "gpt-5",
    "instructions": "You are terse.",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "Say hi"}]}],
    "max_output_tokens": 500,
    "stream": True,
}
RESPONSES_USAGE = {
    "input_tokens": 37,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 140,
    "output_tokens_details": {"reasoning_tokens": 128},
    "total_tokens": 177,
}


def _response(status: str, usage: dict[str, Any] | None, output: list[Any] | None = None) -> dict[str, Any]:
    return {
        "id": "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654",
        "object": "response",
        "created_at": 1741290958,
        "status": status,
        "model": "gpt-5-2025-08-07",
        "output": output or [],
        "usage": usage,
    }


_MESSAGE_ITEM = {
    "id": "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_text", "text": "Hi!", "annotations": []}],
}


def _responses_stream(end: str | None, usage: dict[str, Any] | None = RESPONSES_USAGE) -> bytes:
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        (
            "response.created",
            {"type": "response.created", "sequence_number": 0, "response": _response("in_progress", None)},
        ),
        (
            "response.in_progress",
            {"type": "response.in_progress", "sequence_number": 1, "response": _response("in_progress", None)},
        ),
        (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "sequence_number": 2,
                "output_index": 0,
                "item": _MESSAGE_ITEM | {"status": "in_progress", "content": []},
            },
        ),
    ]
    for n, piece in enumerate(("H", "i", "!")):
        delta = {
            "type": "response.output_text.delta",
            "sequence_number": 3 + n,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": piece,
        }
        events.append(("response.output_text.delta", delta))
    events.append(
        ("response.output_text.done", {"type": "response.output_text.done", "sequence_number": 6, "text": "Hi!"})
    )
    if end is not None:
        status = end.removeprefix("response.")
        events.append((end, {"type": end, "sequence_number": 7, "response": _response(status, usage, [_MESSAGE_ITEM])}))
    return sse(*events)


# --- The splitter -----------------------------------------------------------------------------


def _events(stream: bytes, cuts: list[int]) -> list[SseEvent]:
    splitter = SseSplitter()
    events: list[SseEvent] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        events += splitter.feed(stream[start:cut])
        start = cut
    return events + splitter.flush()


@pytest.mark.parametrize(
    "stream", [ANTHROPIC_STREAM, CHAT_STREAM, sse(*CHAT_BODY, crlf=True)], ids=["anthropic", "chat", "crlf"]
)
def test_split_at_every_byte_offset_gives_the_same_events(stream: bytes) -> None:
    whole = _events(stream, [])
    assert b"".join(event.raw for event in whole) == stream
    for cut in range(1, len(stream)):
        assert _events(stream, [cut]) == whole, cut
    assert _events(stream, list(range(1, len(stream)))) == whole  # one byte at a time


def test_events_keep_their_exact_bytes_name_and_data() -> None:
    stream = b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n: keep-alive\n\ndata: a\ndata:b\n\n'
    events = SseSplitter().feed(stream)
    assert events == [
        SseEvent(
            raw=b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n',
            event="message_stop",
            data=b'{"type":"message_stop"}',
        ),
        SseEvent(raw=b": keep-alive\n\n", event=None, data=b""),
        SseEvent(raw=b"data: a\ndata:b\n\n", event=None, data=b"a\nb"),
    ]


def test_a_partial_event_waits_and_flush_returns_it() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b'data: [DONE]\n\ndata: {"cut') == [SseEvent(b"data: [DONE]\n\n", None, b"[DONE]")]
    assert splitter.feed(b'":1}\r') == []
    assert splitter.flush() == [SseEvent(b'data: {"cut":1}\r', None, b'{"cut":1}')]
    assert splitter.flush() == []


def test_mixed_line_ends_end_an_event() -> None:
    for ending in (b"\n\n", b"\r\n\r\n", b"\r\n\n", b"\n\r\n"):
        events = SseSplitter().feed(b"data: x" + ending + b"data: y" + ending)
        assert [event.data for event in events] == [b"x", b"y"]
        assert b"".join(event.raw for event in events) == b"data: x" + ending + b"data: y" + ending


# --- Stream meters ----------------------------------------------------------------------------


def test_anthropic_stream_usage_deltas_and_end() -> None:
    meter, flags = meter_stream(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST, ANTHROPIC_STREAM)
    assert meter.complete
    assert not any(flags)
    assert meter.output_deltas == 5  # thinking, text and 3 input_json deltas; not the signature
    assert meter.final_usage() == Usage(
        input_tokens=472 + 1800, output_tokens=89, cached_tokens=1800, cache_write_tokens=0
    )


def test_anthropic_message_delta_with_input_fields_replaces_them() -> None:
    end = (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 480,
                "cache_creation_input_tokens": 2048,
                "cache_read_input_tokens": 0,
                "output_tokens": 12,
                "server_tool_use": {"web_search_requests": 1},
            },
        },
    )
    meter, _ = meter_stream(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST, sse(ANTHROPIC_START, end))
    assert meter.final_usage() == Usage(input_tokens=480 + 2048, output_tokens=12, cache_write_tokens=2048)
    assert not meter.complete  # no message_stop: cut after the usage, which still stands


def test_anthropic_cut_stream_settles_input_reported_and_deltas_received() -> None:
    meter, _ = meter_stream(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST, sse(ANTHROPIC_START, *ANTHROPIC_BODY[:7]))
    assert not meter.complete
    assert meter.final_usage() == Usage(input_tokens=2272, output_tokens=2, cached_tokens=1800)
    capped = StreamMeter(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST | {"max_tokens": 1})
    for event in SseSplitter().feed(sse(ANTHROPIC_START, *ANTHROPIC_BODY)):
        capped.observe(event.data)
    assert capped.final_usage().output_tokens == 1  # never past the request's limit


def test_a_stream_cut_before_any_output_costs_nothing() -> None:
    meter, _ = meter_stream(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST, sse(ANTHROPIC_START))
    assert meter.final_usage() == Usage()


def test_chat_stream_usage_only_chunk_is_flagged() -> None:
    meter, flags = meter_stream(Surface.OPENAI_CHAT, CHAT_REQUEST, CHAT_STREAM)
    assert flags == [False] * len(CHAT_BODY) + [True, False]
    assert meter.complete
    assert meter.output_deltas == 4  # two contents and two argument pieces; empty ones don't count
    assert meter.final_usage() == Usage(input_tokens=1117, output_tokens=46, cached_tokens=1024)


def test_chat_usage_on_a_chunk_with_choices_is_read_but_not_flagged() -> None:
    _, chunk = _chunk({"content": "Hi"}, finish="stop")
    chunk["usage"] = CHAT_USAGE | {"completion_tokens_details": {"reasoning_tokens": 30, "audio_tokens": 5}}
    meter = StreamMeter(Surface.OPENAI_CHAT, CHAT_REQUEST)
    assert meter.observe(orjson.dumps(chunk)) is False
    assert meter.final_usage() == Usage(1117, 46, 1024, reasoning_tokens=30, audio_output_tokens=5)


def test_chat_cut_stream_estimates_from_the_prompt_and_deltas() -> None:
    meter, _ = meter_stream(Surface.OPENAI_CHAT, CHAT_REQUEST, sse(*CHAT_BODY[:3]))
    assert not meter.complete
    characters = len("You are terse.") + len("Weather in Paris?")
    assert meter.final_usage() == Usage(input_tokens=math.ceil(characters / 4), output_tokens=2)


def test_chat_cut_after_usage_settles_the_usage() -> None:
    meter, _ = meter_stream(Surface.OPENAI_CHAT, CHAT_REQUEST, sse(*CHAT_BODY, CHAT_USAGE_CHUNK))
    assert not meter.complete
    assert meter.final_usage() == Usage(input_tokens=1117, output_tokens=46, cached_tokens=1024)


def test_chat_output_estimate_is_capped_at_max_tokens_times_n() -> None:
    meter, _ = meter_stream(Surface.OPENAI_CHAT, {"messages": [], "max_tokens": 1, "n": 2}, sse(*CHAT_BODY))
    assert meter.final_usage().output_tokens == 2


@pytest.mark.parametrize("end", ["response.completed", "response.incomplete", "response.failed"])
def test_responses_stream_ends_with_usage(end: str) -> None:
    meter, flags = meter_stream(Surface.OPENAI_RESPONSES, RESPONSES_REQUEST, _responses_stream(end))
    assert meter.complete
    assert not any(flags)
    assert meter.output_deltas == 3
    assert meter.final_usage() == Usage(input_tokens=37, output_tokens=140, reasoning_tokens=128)


def test_responses_failed_without_usage_and_cut_streams_estimate() -> None:
    failed, _ = meter_stream(Surface.OPENAI_RESPONSES, RESPONSES_REQUEST, _responses_stream("response.failed", None))
    cut, _ = meter_stream(Surface.OPENAI_RESPONSES, RESPONSES_REQUEST, _responses_stream(None))
    assert failed.complete
    assert not cut.complete
    expected = Usage(input_tokens=math.ceil(len("You are terse.Say hi") / 4), output_tokens=3)
    assert failed.final_usage() == cut.final_usage() == expected


def test_only_events_that_carry_usage_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    loads = metering._loads

    def counting(data: bytes) -> dict[str, Any]:
        parsed.append(data)
        return loads(data)

    monkeypatch.setattr(metering, "_loads", counting)
    meter_stream(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST, ANTHROPIC_STREAM)
    meter_stream(Surface.OPENAI_CHAT, CHAT_REQUEST, CHAT_STREAM)
    meter_stream(Surface.OPENAI_RESPONSES, RESPONSES_REQUEST, _responses_stream("response.completed"))
    types = [orjson.loads(data).get("type") or orjson.loads(data).get("object") for data in parsed]
    assert types == ["message_start", "message_delta", "chat.completion.chunk", "response.completed"]


def test_malformed_events_are_ignored() -> None:
    meter = StreamMeter(Surface.OPENAI_CHAT, CHAT_REQUEST)
    assert meter.observe(b'{"choices":[],"usage":{"prompt_tokens":"many"}}') is False
    assert meter.observe(b'{"usage":{ not json') is False
    anthropic = StreamMeter(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST)
    assert anthropic.observe(b'{"type":"message_start","message":[]}') is False
    assert anthropic.observe(b"") is False
    assert anthropic.final_usage() == Usage()


def test_stream_meter_refuses_a_surface_that_does_not_stream() -> None:
    with pytest.raises(ValueError, match=r"openai\.embeddings"):
        StreamMeter(Surface.OPENAI_EMBEDDINGS, {})


# --- Usage of whole answers -------------------------------------------------------------------


def test_anthropic_message_usage() -> None:
    payload = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "thinking", "thinking": "...", "signature": "Eq"}, {"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 21,
            "cache_creation_input_tokens": 188086,
            "cache_read_input_tokens": 0,
            "output_tokens": 393,
            "service_tier": "standard",
        },
    }
    usage = usage_from_response(Surface.ANTHROPIC_MESSAGES, payload, request_body=ANTHROPIC_REQUEST)
    assert usage == Usage(input_tokens=188107, output_tokens=393, cache_write_tokens=188086)


def test_anthropic_null_cache_fields_are_zero() -> None:
    payload = {
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
            "output_tokens": 3,
        }
    }
    assert usage_from_response(Surface.ANTHROPIC_MESSAGES, payload, request_body={}) == Usage(10, 3)


def test_openai_chat_usage() -> None:
    payload = {
        "object": "chat.completion",
        "choices": [],
        "usage": CHAT_USAGE | {"prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 7}},
    }
    usage = usage_from_response(Surface.OPENAI_CHAT, payload, request_body=CHAT_REQUEST)
    assert usage == Usage(input_tokens=1117, output_tokens=46, cached_tokens=1024, audio_input_tokens=7)


def test_responses_usage() -> None:
    payload = _response("completed", RESPONSES_USAGE | {"input_tokens_details": {"cached_tokens": 20}}, [_MESSAGE_ITEM])
    usage = usage_from_response(Surface.OPENAI_RESPONSES, payload, request_body=RESPONSES_REQUEST)
    assert usage == Usage(input_tokens=37, output_tokens=140, cached_tokens=20, reasoning_tokens=128)


def test_embeddings_usage() -> None:
    payload = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": "AAAA"}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    assert usage_from_response(Surface.OPENAI_EMBEDDINGS, payload, request_body={}) == Usage(input_tokens=8)


def test_speech_usage_is_the_characters_asked_for() -> None:
    body = {"model": "gpt-4o-mini-tts", "input": "Bonjour, ça va ?", "voice": "coral"}
    assert usage_from_response(Surface.OPENAI_SPEECH, {}, request_body=body) == Usage(characters=16)
    assert worst(Surface.OPENAI_SPEECH, body, TTS) == Usage(characters=16)


def test_transcription_usage_in_tokens_and_in_seconds() -> None:
    tokens = {
        "text": "Hello.",
        "usage": {
            "type": "tokens",
            "input_tokens": 14,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
            "output_tokens": 45,
            "total_tokens": 59,
        },
    }
    duration = {"text": "Hello.", "usage": {"type": "duration", "seconds": 3.2}}
    assert usage_from_response(Surface.OPENAI_TRANSCRIPTION, tokens, request_body={}) == Usage(
        input_tokens=14, output_tokens=45, audio_input_tokens=14
    )
    assert usage_from_response(Surface.OPENAI_TRANSCRIPTION, duration, request_body={}) == Usage(seconds=4)
    exact = {"usage": {"type": "duration", "seconds": 3}}
    assert usage_from_response(Surface.OPENAI_TRANSCRIPTION, exact, request_body={}) == Usage(seconds=3)


def test_count_tokens_is_free() -> None:
    assert usage_from_response(Surface.ANTHROPIC_COUNT_TOKENS, {"input_tokens": 14}, request_body={}) == Usage()
    assert worst(Surface.ANTHROPIC_COUNT_TOKENS, {"messages": [{"role": "user", "content": "x"}]}, SONNET) == Usage()


@pytest.mark.parametrize(
    ("surface", "payload"),
    [
        (Surface.ANTHROPIC_MESSAGES, {"content": []}),
        (Surface.ANTHROPIC_MESSAGES, {"usage": {"input_tokens": 5}}),
        (Surface.OPENAI_CHAT, {"usage": None}),
        (Surface.OPENAI_CHAT, {"usage": {"prompt_tokens": True, "completion_tokens": 1}}),
        (Surface.OPENAI_RESPONSES, {"usage": []}),
        (Surface.OPENAI_EMBEDDINGS, {"usage": {"prompt_tokens": -1}}),
        (Surface.OPENAI_TRANSCRIPTION, {"text": "no usage (whisper-1 text)"}),
        (Surface.OPENAI_TRANSCRIPTION, {"usage": {"type": "duration", "seconds": "3"}}),
        (Surface.OPENAI_SPEECH, {}),
    ],
)
def test_no_usage_reported_is_none(surface: Surface, payload: dict[str, Any]) -> None:
    assert usage_from_response(surface, payload, request_body={}) is None


# --- Worst cases ------------------------------------------------------------------------------


def test_anthropic_worst_case_counts_body_messages_tools_and_max_tokens() -> None:
    body_bytes = len(orjson.dumps(ANTHROPIC_REQUEST))
    usage = worst(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST, SONNET)
    # 1 message + system + reply, and the tool-use system prompt; thinking is within max_tokens.
    assert usage == Usage(input_tokens=body_bytes + 3 * 8 + 500, output_tokens=1024)


def test_missing_or_invalid_output_limits_take_the_model_ceiling() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert worst(Surface.ANTHROPIC_MESSAGES, body, SONNET).output_tokens == SONNET.max_output_tokens
    assert (
        worst(Surface.ANTHROPIC_MESSAGES, body | {"max_tokens": "9"}, SONNET).output_tokens == SONNET.max_output_tokens
    )
    assert worst(Surface.OPENAI_CHAT, body | {"n": 3}, GPT_41).output_tokens == 3 * GPT_41.max_output_tokens
    assert worst(Surface.OPENAI_RESPONSES, {"input": "hi"}, GPT_5).output_tokens == GPT_5.max_output_tokens
    assert (
        worst(Surface.OPENAI_RESPONSES, {"input": "hi", "max_output_tokens": True}, GPT_5).output_tokens
        == GPT_5.max_output_tokens
    )


def test_openai_chat_output_is_the_limit_times_n() -> None:
    body = CHAT_REQUEST | {"max_completion_tokens": 100, "max_tokens": 7, "n": 4}
    assert worst(Surface.OPENAI_CHAT, body, GPT_41).output_tokens == 400
    assert worst(Surface.OPENAI_CHAT, {"messages": [], "max_tokens": 7}, GPT_41).output_tokens == 7


def test_images_count_by_their_ceiling_not_their_base64_size() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": BIG_IMAGE}}
    body = {
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}],
    }
    without = {"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}]}]}
    text_part = worst(Surface.ANTHROPIC_MESSAGES, without, SONNET).input_tokens
    image_part = len(orjson.dumps(image)) - len(BIG_IMAGE) + 1  # the block's JSON (and its comma)
    assert worst(Surface.ANTHROPIC_MESSAGES, body, SONNET).input_tokens == text_part + image_part + 1_800
    assert worst(Surface.ANTHROPIC_MESSAGES, body, OPUS_47).input_tokens == text_part + image_part + 4_800


def test_openai_image_urls_and_data_urls() -> None:
    data_url = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{BIG_IMAGE}", "detail": "high"}}
    https = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"messages": [{"role": "user", "content": [data_url, https]}], "max_tokens": 1}
    usage = worst(Surface.OPENAI_CHAT, body, GPT_41)
    assert 2 * 3_779 < usage.input_tokens < 2 * 3_779 + 300
    assert worst(Surface.OPENAI_CHAT, body, GPT_4O_MINI).input_tokens == usage.input_tokens + 2 * (48_169 - 3_779)
    responses = {
        "input": [
            {"role": "user", "content": [{"type": "input_image", "image_url": f"data:image/jpeg;base64,{BIG_IMAGE}"}]}
        ]
    }
    assert worst(Surface.OPENAI_RESPONSES, responses, GPT_5).input_tokens < 3_779 + 200


def test_images_inside_tool_results_are_found() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": BIG_IMAGE}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": [result]}]}
    assert worst(Surface.ANTHROPIC_MESSAGES, body, SONNET).input_tokens < 1_800 + 300


def test_input_audio_is_bounded_by_its_length() -> None:
    audio = base64.b64encode(b"\0" * 48_000).decode()  # at most 64 s at 6 kbit/s
    body = {
        "model": "gpt-4o-audio-preview",
        "modalities": ["text", "audio"],
        "max_completion_tokens": 100,
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}
        ],
    }
    usage = worst(Surface.OPENAI_CHAT, body, GPT_41)
    assert usage.audio_input_tokens == 640
    assert 640 < usage.input_tokens < 640 + 300
    assert usage.output_tokens == usage.audio_output_tokens == 100


def test_anthropic_defined_tools_add_their_definitions() -> None:
    body = {
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Open the file"}],
        "tools": [
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
            {"name": "mine", "input_schema": {"type": "object"}},
        ],
    }
    plain = body | {"tools": [{"name": "mine", "input_schema": {"type": "object"}}]}
    difference = (
        worst(Surface.ANTHROPIC_MESSAGES, body, SONNET).input_tokens
        - worst(Surface.ANTHROPIC_MESSAGES, plain, SONNET).input_tokens
    )
    assert difference > 1_500


def test_embeddings_worst_case_is_the_body() -> None:
    body = {"model": "text-embedding-3-small", "input": ["one", "two"], "encoding_format": "base64"}
    assert worst(Surface.OPENAI_EMBEDDINGS, body, EMBEDDING) == Usage(input_tokens=len(orjson.dumps(body)))


def test_transcription_worst_case_is_bounded_by_the_upload() -> None:
    body = {"model": "gpt-4o-transcribe", "prompt": "Niyra, BYOK", "response_format": "json"}
    usage = worst_case(Surface.OPENAI_TRANSCRIPTION, body, body_bytes=1_500_001, model=STT)
    assert usage == Usage(input_tokens=20_010 + 11, output_tokens=2_000, audio_input_tokens=20_010, seconds=2_001)


# --- Worst case >= what the provider can report (property) ------------------------------------


ANTHROPIC_STANDARD_TIER = (
    "claude-sonnet-4",
    "claude-haiku-4",
    "claude-opus-4-0",
    "claude-opus-4-1",
    "claude-opus-4-5",
    "claude-opus-4-6",
)
OPENAI_KNOWN_SCHEMES = frozenset(
    {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5", "gpt-5-mini", "gpt-5-nano"}
)


def _anthropic_image_tokens(width: int, height: int, *, high: bool) -> int:
    """What Anthropic charges for an image, after its own resizing (plus the block's tokens)."""
    if high:
        scale = min(1.0, 2576 / max(width, height), math.sqrt(3_605_000 / (width * height)))
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        return math.ceil(w / 28) * math.ceil(h / 28) + 3
    scale = min(1.0, 1568 / max(width, height), math.sqrt(1_600 * 750 / (width * height)))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    return math.ceil(w * h / 750) + 3


def _openai_image_tokens(width: int, height: int, model: CatalogModel) -> int:
    """The most detail "high" can cost: tiles (gpt-4o/4.1/5, gpt-4o-mini) or patches (mini/nano)."""
    if model.vendor_model in ("gpt-4.1-mini", "gpt-4.1-nano", "gpt-5-mini", "gpt-5-nano"):
        scale = min(1.0, math.sqrt(1536 * 32 * 32 / (width * height)))
        patches = min(1536, math.ceil(width * scale / 32) * math.ceil(height * scale / 32))
        return math.ceil(patches * (2.46 if model.vendor_model.endswith("nano") else 1.62))
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    tiles = math.ceil(w * scale / 512) * math.ceil(h * scale / 512)
    base, tile = {"gpt-4o-mini": (2833, 5667), "gpt-5": (70, 140)}.get(model.vendor_model, (85, 170))
    return base + tile * tiles


_texts = st.text(min_size=0, max_size=200)
_sizes = st.tuples(st.integers(1, 8000), st.integers(1, 8000), st.integers(0, 3_000))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    turns=st.lists(st.tuples(_texts, st.lists(_sizes, max_size=3)), min_size=1, max_size=6),
    system=_texts,
    tools=st.booleans(),
    max_tokens=st.one_of(st.none(), st.integers(1, 200_000)),
    model=st.sampled_from(
        [
            catalog.resolve(name)
            for name in ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-0", "claude-opus-4-8", "apex")
        ]
    ),
)
def test_anthropic_worst_case_bounds_any_plausible_report(
    turns: list[tuple[str, list[tuple[int, int, int]]]],
    system: str,
    tools: bool,
    max_tokens: int | None,
    model: CatalogModel,
) -> None:
    high = not model.vendor_model.startswith(ANTHROPIC_STANDARD_TIER)
    messages = []
    plausible = len(system.encode()) + 3  # a token is at least a byte of text; the reply's priming
    for text, images in turns:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}]
        plausible += len(text.encode()) + 7
        for width, height, size in images:
            data = base64.b64encode(b"\x89PNG" * size).decode()
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}})
            plausible += _anthropic_image_tokens(width, height, high=high)
        messages.append({"role": "user", "content": blocks})
    body: dict[str, Any] = {"model": model.id, "system": system, "messages": messages}
    if tools:
        body["tools"] = [{"name": "t", "description": "d", "input_schema": {"type": "object"}}]
        plausible += 346
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    usage = worst(Surface.ANTHROPIC_MESSAGES, body, model)
    assert usage.input_tokens >= plausible
    assert usage.output_tokens >= (max_tokens or model.max_output_tokens)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    turns=st.lists(st.tuples(_texts, st.lists(_sizes, max_size=3)), min_size=1, max_size=6),
    limit=st.one_of(st.none(), st.integers(1, 100_000)),
    n=st.integers(1, 4),
    model=st.sampled_from(
        [catalog.resolve(name) for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-nano")]
    ),
)
def test_openai_chat_worst_case_bounds_any_plausible_report(
    turns: list[tuple[str, list[tuple[int, int, int]]]], limit: int | None, n: int, model: CatalogModel
) -> None:
    messages = []
    plausible = 3
    for text, images in turns:
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
        plausible += len(text.encode()) + 4
        for width, height, size in images:
            url = "data:image/png;base64," + base64.b64encode(b"\x89PNG" * size).decode()
            parts.append({"type": "image_url", "image_url": {"url": url, "detail": "high"}})
            plausible += _openai_image_tokens(width, height, model)
        messages.append({"role": "user", "content": parts})
    body: dict[str, Any] = {"model": model.id, "messages": messages, "n": n}
    if limit is not None:
        body["max_completion_tokens"] = limit
    usage = worst(Surface.OPENAI_CHAT, body, model)
    assert usage.input_tokens >= plausible
    assert usage.output_tokens >= n * (limit or model.max_output_tokens)


CHAT_MODELS = [model for model in catalog.MODELS if model.kind == "chat"]


@pytest.mark.parametrize("model", CHAT_MODELS, ids=lambda model: model.id)
@settings(max_examples=100)
@given(width=st.integers(1, 8000), height=st.integers(1, 8000))
@example(width=8000, height=8000)
@example(width=2576, height=1399)
@example(width=1399, height=2576)
@example(width=1092, height=1092)
@example(width=1536, height=2048)
@example(width=8000, height=1)
def test_the_image_ceiling_bounds_an_image_of_any_size(model: CatalogModel, width: int, height: int) -> None:
    """Sharper than the bodies above, whose JSON bytes leave slack: the constant alone."""
    if model.provider == "anthropic":
        high = not model.vendor_model.startswith(ANTHROPIC_STANDARD_TIER)
        reported = _anthropic_image_tokens(width, height, high=high)
    elif model.vendor_model in OPENAI_KNOWN_SCHEMES:
        reported = _openai_image_tokens(width, height, model)
    else:  # a newer scheme: the largest of the known ones but gpt-4o-mini's
        reported = _openai_image_tokens(width, height, GPT_5_NANO)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    body = {"messages": [{"role": "user", "content": [image]}]}
    bare = {"messages": [{"role": "user", "content": []}]}
    surface = Surface.ANTHROPIC_MESSAGES if model.provider == "anthropic" else Surface.OPENAI_CHAT
    ceiling = (
        worst_case(surface, body, body_bytes=0, model=model).input_tokens
        - worst_case(surface, bare, body_bytes=0, model=model).input_tokens
    )
    assert ceiling >= reported


def test_image_shaped_tool_input_is_text_not_an_image() -> None:
    """A tool's input is text to the model whatever its shape: its bytes all count."""
    fake = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": BIG_IMAGE}}
    call = {"type": "tool_use", "id": "toolu_1", "name": "store", "input": {"blob": fake}}
    body = {"max_tokens": 10, "messages": [{"role": "assistant", "content": [call]}]}
    assert worst(Surface.ANTHROPIC_MESSAGES, body, SONNET).input_tokens > len(BIG_IMAGE)


def test_images_in_a_content_document_and_a_function_output_are_found() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": BIG_IMAGE}}
    document = {"type": "document", "source": {"type": "content", "content": [image]}}
    anthropic = {"max_tokens": 10, "messages": [{"role": "user", "content": [document]}]}
    assert worst(Surface.ANTHROPIC_MESSAGES, anthropic, SONNET).input_tokens < 1_800 + 300
    output = [{"type": "input_image", "image_url": f"data:image/png;base64,{BIG_IMAGE}"}]
    responses = {"input": [{"type": "function_call_output", "call_id": "call_1", "output": output}]}
    assert worst(Surface.OPENAI_RESPONSES, responses, GPT_5).input_tokens < 3_779 + 300


def test_other_field_orders_and_spellings_on_lf_streams() -> None:
    stream = b"data:{}\nevent:  two\n\nid: 7\nretry: 100\n\n: comment\ndata: a\ndata:\n\ndata: only"
    splitter = SseSplitter()
    assert splitter.feed(stream) == [
        SseEvent(b"data:{}\nevent:  two\n\n", " two", b"{}"),
        SseEvent(b"id: 7\nretry: 100\n\n", None, b""),
        SseEvent(b": comment\ndata: a\ndata:\n\n", None, b"a\n"),
    ]
    assert splitter.flush() == [SseEvent(b"data: only", None, b"only")]


def test_a_stream_that_turns_to_crlf_midway_splits_the_same_at_every_offset() -> None:
    stream = CHAT_STREAM[:400] + CHAT_STREAM[400:].replace(b"\n", b"\r\n")
    whole = _events(stream, [])
    assert b"".join(event.raw for event in whole) == stream
    assert [event.data for event in whole] == [event.data for event in _events(CHAT_STREAM, [])]
    for cut in range(1, len(stream)):
        assert _events(stream, [cut]) == whole, cut


def test_usage_in_spaced_json_is_still_read() -> None:
    meter = StreamMeter(Surface.OPENAI_CHAT, CHAT_REQUEST)
    assert meter.observe(json.dumps(_chunk({"content": "Hi"})[1]).encode()) is False
    assert meter.observe(json.dumps(CHAT_USAGE_CHUNK[1]).encode()) is True
    anthropic = StreamMeter(Surface.ANTHROPIC_MESSAGES, ANTHROPIC_REQUEST)
    for _, data in (ANTHROPIC_START, *ANTHROPIC_END):
        anthropic.observe(json.dumps(data).encode())
    assert anthropic.complete
    assert anthropic.final_usage() == Usage(input_tokens=2272, output_tokens=89, cached_tokens=1800)
