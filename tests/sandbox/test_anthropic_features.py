"""The sandbox's Anthropic Messages API beyond plain text, driven by the official anthropic SDK:
tools (plain and streamed round trips), extended thinking, prompt caching, images, count_tokens,
models/{id}, and the errors of each (typed SDK exceptions)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest

from sandbox import REPLY_TEXT, SandboxServer, anthropic_key
from sandbox.media import IMAGE_TOKENS, TINY_PNG
from sandbox.replies import THINKING_TEXT, THINKING_WORDS, TOOL_CALL_TOKENS, tool_tokens

MODEL = "claude-sonnet-4-6"
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "detailed": {"type": "boolean"},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}},
                "required": ["lat", "tags"],
            },
            "optional": {"type": "string"},
        },
        "required": ["city", "days", "unit", "detailed", "where"],
    },
}
CLOCK: Any = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
EXPECTED_INPUT = {
    "city": "sandbox",
    "days": 1,
    "unit": "celsius",
    "detailed": True,
    "where": {"lat": 1.5, "tags": ["sandbox"]},
}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]  # 6 words


def test_a_tool_round_trip(claude: anthropic.Anthropic) -> None:
    first = claude.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER, CLOCK], messages=ASK)
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert use.type == "tool_use"
    assert use.id.startswith("toolu_")
    assert (use.name, use.input) == ("get_weather", EXPECTED_INPUT)
    tools_in = tool_tokens(WEATHER) + tool_tokens(CLOCK)
    assert (first.usage.input_tokens, first.usage.output_tokens) == (6 + tools_in, TOOL_CALL_TOKENS)

    history: Any = [
        *ASK,
        {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny and warm"}]},
    ]
    second = claude.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER, CLOCK], messages=history)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == REPLY_TEXT
    # 6 + a tool call sent back (20) + the 3 words of its result.
    assert second.usage.input_tokens == 6 + TOOL_CALL_TOKENS + 3 + tools_in


def test_a_streamed_tool_call_reassembles_to_the_same_json(claude: anthropic.Anthropic) -> None:
    raw = list(claude.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER], messages=ASK, stream=True))
    types = [e.type for e in raw]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    start = next(e for e in raw if e.type == "content_block_start")
    assert start.content_block.type == "tool_use" and start.content_block.input == {}
    pieces = [
        e.delta.partial_json for e in raw if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == EXPECTED_INPUT

    with claude.messages.stream(model=MODEL, max_tokens=200, tools=[WEATHER], messages=ASK) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == EXPECTED_INPUT
    assert final.usage.output_tokens == TOOL_CALL_TOKENS

    use = final.content[0]
    history: Any = [
        *ASK,
        {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "ok"}]}],
        },
    ]
    with claude.messages.stream(model=MODEL, max_tokens=200, tools=[WEATHER], messages=history) as stream:
        assert "".join(stream.text_stream) == REPLY_TEXT
        assert stream.get_final_message().stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "get_weather"),
        ({"type": "any"}, "get_weather"),
        ({"type": "tool", "name": "get_time"}, "get_time"),
        ({"type": "auto", "disable_parallel_tool_use": True}, "get_weather"),
        ({"type": "none"}, None),
    ],
)
def test_tool_choice(claude: anthropic.Anthropic, choice: Any, expected: str | None) -> None:
    msg = claude.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER, CLOCK], tool_choice=choice, messages=ASK)
    if expected is None:
        assert msg.stop_reason == "end_turn" and msg.content[0].type == "text"
    else:
        assert [b.type for b in msg.content] == ["tool_use"]
        assert msg.content[0].name == expected  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tool_choice": {"type": "any"}}, "tool_choice may only be specified while providing tools"),
        ({"tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]}, "tools.0.custom.name"),
        ({"tools": [{"name": "x"}]}, "input_schema: Field required"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
        ({"tools": [WEATHER], "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ],
)
def test_tool_errors(claude: anthropic.Anthropic, extra: Any, message: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(model=MODEL, max_tokens=100, messages=ASK, **extra)
    assert exc.value.type == "invalid_request_error"
    assert message in exc.value.message


def test_tool_results_must_answer_the_previous_tool_uses(claude: anthropic.Anthropic) -> None:
    use: Any = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    orphan: Any = [
        *ASK,
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]},
    ]
    with pytest.raises(anthropic.BadRequestError, match="unexpected `tool_use_id`"):
        claude.messages.create(model=MODEL, max_tokens=100, messages=orphan)
    unanswered: Any = [*ASK, {"role": "assistant", "content": [use]}, {"role": "user", "content": "and?"}]
    with pytest.raises(anthropic.BadRequestError, match="without `tool_result` blocks"):
        claude.messages.create(model=MODEL, max_tokens=100, messages=unanswered)


def test_extended_thinking(claude: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    msg = claude.messages.create(model=MODEL, max_tokens=2048, thinking=thinking, messages=ASK)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    block = msg.content[0]
    assert block.type == "thinking" and block.thinking == THINKING_TEXT and block.signature
    assert msg.usage.output_tokens == len(THINKING_WORDS) + 12

    events = list(claude.messages.create(model=MODEL, max_tokens=2048, thinking=thinking, messages=ASK, stream=True))
    kinds = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert kinds == ["thinking_delta"] * len(THINKING_WORDS) + ["signature_delta"] + ["text_delta"] * 12
    with claude.messages.stream(model=MODEL, max_tokens=2048, thinking=thinking, messages=ASK) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert (final.content[0].thinking, final.content[0].signature) == (THINKING_TEXT, block.signature)
    assert final.content[1].type == "text" and final.content[1].text == REPLY_TEXT
    assert final.usage.output_tokens == len(THINKING_WORDS) + 12


def test_thinking_then_a_tool_call(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model=MODEL, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1500}, tools=[WEATHER], messages=ASK
    )
    assert [b.type for b in msg.content] == ["thinking", "tool_use"]
    assert msg.usage.output_tokens == len(THINKING_WORDS) + TOOL_CALL_TOKENS


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1000}}, "greater than or equal to 1024"),
        ({"max_tokens": 1024, "thinking": {"type": "enabled", "budget_tokens": 1024}}, "`max_tokens` must be greater"),
        ({"max_tokens": 2000, "thinking": {"type": "enabled"}}, "budget_tokens: Field required"),
        (
            {
                "max_tokens": 2000,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "extra_body": {"temperature": 0.2},
            },
            "temperature",
        ),
        (
            {
                "max_tokens": 2000,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "tools": [WEATHER],
                "tool_choice": {"type": "any"},
            },
            "Thinking may not be enabled when tool_choice forces tool use",
        ),
    ],
)
def test_thinking_errors(claude: anthropic.Anthropic, extra: Any, message: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(model=MODEL, messages=ASK, **extra)
    assert message in exc.value.message


def test_prompt_cache_write_then_read(claude: anthropic.Anthropic, sandbox: SandboxServer) -> None:
    system: Any = [
        {"type": "text", "text": "You are a careful assistant. " * 10},  # 50 words
        {"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}},  # 2 words
    ]
    first = claude.messages.create(model=MODEL, max_tokens=5, system=system, messages=ASK)
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens, first.usage.input_tokens) == (
        52,
        0,
        6,
    )
    assert first.usage.cache_creation is not None and first.usage.cache_creation.ephemeral_5m_input_tokens == 52
    again: Any = [{"role": "user", "content": "Something else entirely"}]
    second = claude.messages.create(model=MODEL, max_tokens=5, system=system, messages=again)
    assert (
        second.usage.cache_creation_input_tokens,
        second.usage.cache_read_input_tokens,
        second.usage.input_tokens,
    ) == (0, 52, 3)
    # The same prefix on another model, or another key, is a new cache entry.
    other = claude.messages.create(model="claude-haiku-4-5", max_tokens=5, system=system, messages=ASK)
    assert other.usage.cache_creation_input_tokens == 52
    with anthropic.Anthropic(api_key=anthropic_key(), base_url=sandbox.anthropic_base_url, max_retries=0) as stranger:
        assert (
            stranger.messages.create(
                model=MODEL, max_tokens=5, system=system, messages=ASK
            ).usage.cache_read_input_tokens
            == 0
        )
    # Streams report the same figures, in message_start and message_delta.
    with claude.messages.stream(model=MODEL, max_tokens=5, system=system, messages=ASK) as stream:
        final = stream.get_final_message()
    assert (final.usage.cache_read_input_tokens, final.usage.input_tokens, final.usage.output_tokens) == (52, 6, 5)
    sandbox.reset()  # forgets the cache
    assert (
        claude.messages.create(model=MODEL, max_tokens=5, system=system, messages=ASK).usage.cache_creation_input_tokens
        == 52
    )


def test_a_longer_prefix_reads_the_cached_part_and_writes_the_rest(claude: anthropic.Anthropic) -> None:
    tool: Any = {**WEATHER, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    first = claude.messages.create(model=MODEL, max_tokens=5, tools=[tool], messages=ASK)
    tools_in = tool_tokens(tool)
    assert first.usage.cache_creation_input_tokens == tools_in
    assert first.usage.cache_creation is not None and first.usage.cache_creation.ephemeral_1h_input_tokens == tools_in
    marked: Any = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the weather in Paris?", "cache_control": {"type": "ephemeral"}}
            ],
        }
    ]
    second = claude.messages.create(
        model=MODEL, max_tokens=5, tools=[tool], tool_choice={"type": "none"}, messages=marked
    )
    assert (
        second.usage.cache_read_input_tokens,
        second.usage.cache_creation_input_tokens,
        second.usage.input_tokens,
    ) == (tools_in, 6, 0)


def test_the_cached_word_still_wins(sandbox: SandboxServer) -> None:
    system: Any = [{"type": "text", "text": "one two three four", "cache_control": {"type": "ephemeral"}}]
    with anthropic.Anthropic(
        api_key=anthropic_key("cached"), base_url=sandbox.anthropic_base_url, max_retries=0
    ) as client:
        msg = client.messages.create(model=MODEL, max_tokens=5, system=system, messages=ASK)
    assert (msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens, msg.usage.input_tokens) == (
        5,
        0,
        5,
    )


def test_more_than_four_cache_marks_is_refused(claude: anthropic.Anthropic) -> None:
    system: Any = [{"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks with cache_control"):
        claude.messages.create(model=MODEL, max_tokens=5, system=system, messages=ASK)


def test_images_count_a_fixed_number_of_tokens(claude: anthropic.Anthropic) -> None:
    content: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": TINY_PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "Describe these"},
    ]
    msg = claude.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": content}])
    assert msg.usage.input_tokens == 2 * IMAGE_TOKENS + 2
    counted = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": content}])
    assert counted.input_tokens == msg.usage.input_tokens


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"type": "base64", "media_type": "image/bmp", "data": TINY_PNG}, "media_type"),
        ({"type": "base64", "media_type": "image/png", "data": "not base64!"}, "base64"),
        ({"type": "base64", "media_type": "image/jpeg", "data": TINY_PNG}, "does not match the provided media type"),
        ({"type": "url", "url": "ftp://example.com/a.png"}, "url"),
    ],
)
def test_bad_images_are_refused(claude: anthropic.Anthropic, source: Any, message: str) -> None:
    content: Any = [{"type": "image", "source": source}, {"type": "text", "text": "hi"}]
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": content}])
    assert exc.value.type == "invalid_request_error"
    assert message in exc.value.message


def test_count_tokens_counts_tools_system_and_images(claude: anthropic.Anthropic) -> None:
    content: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": TINY_PNG}},
        {"type": "text", "text": "a b"},
    ]
    counted = claude.messages.count_tokens(
        model=MODEL, system="be brief", tools=[WEATHER], messages=[{"role": "user", "content": content}]
    )
    assert counted.input_tokens == 2 + tool_tokens(WEATHER) + IMAGE_TOKENS + 2
    msg = claude.messages.create(
        model=MODEL,
        max_tokens=1,
        system="be brief",
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": content}],
    )
    assert msg.usage.input_tokens == counted.input_tokens


def test_models_retrieve(claude: anthropic.Anthropic) -> None:
    model = claude.models.retrieve("claude-sonnet-4-5")
    assert (model.id, model.type, model.display_name) == ("claude-sonnet-4-5", "model", "Claude Sonnet 4.5")
    assert claude.models.retrieve("claude-haiku-4-5-20251001").id == "claude-haiku-4-5"
    with pytest.raises(anthropic.NotFoundError) as exc:
        claude.models.retrieve("claude-nonexistent-9")
    assert exc.value.type == "not_found_error"
    page = claude.models.list()
    assert page.has_more is False and page.first_id == page.data[0].id and page.last_id == page.data[-1].id


def test_behaviour_words_apply_to_tool_and_thinking_replies(sandbox: SandboxServer) -> None:
    def client(*words: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key=anthropic_key(*words), base_url=sandbox.anthropic_base_url, max_retries=0, timeout=2
        )

    with client("ratelimit") as c, pytest.raises(anthropic.RateLimitError):
        c.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER], messages=ASK)
    with (
        client("cut") as c,
        pytest.raises(httpx2.RemoteProtocolError),
        c.messages.stream(model=MODEL, max_tokens=100, tools=[WEATHER], messages=ASK) as s,
    ):
        s.get_final_message()
    with client("malformed") as c, pytest.raises(json.JSONDecodeError):
        c.messages.create(
            model=MODEL, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}, messages=ASK
        )


def test_the_log_keeps_the_body_and_the_provider_headers(
    claude: anthropic.Anthropic, sandbox: SandboxServer, http: httpx2.Client
) -> None:
    body: Any = {
        "model": MODEL,
        "max_tokens": 5,
        "messages": ASK,
        "metadata": {"user_id": "u-1"},
        "some_future_field": {"nested": [1, 2.5, None, "x"]},
    }
    headers = {
        "x-api-key": anthropic_key(),
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
        "idempotency-key": "idem-1",
    }
    assert http.post("/anthropic/v1/messages", json=body, headers=headers).status_code == 200
    [record] = http.get("/_sandbox/log").json()
    assert record["body"] == body
    assert record["headers"] == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
        "idempotency-key": "idem-1",
    }
    assert headers["x-api-key"] not in json.dumps(record)
    claude.models.list()
    assert sandbox.log.records()[-1]["body"] is None
