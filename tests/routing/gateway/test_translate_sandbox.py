"""The translation against the provider sandbox: what `chat_to_anthropic` builds, sent with the
official anthropic SDK, is accepted as sent, and the answers translate back to what an OpenAI
client expects (text, truncation, cached usage, streams with and without usage, tool calls and
their streamed deltas, a tool round trip, JSON output, images, typed errors).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from routing.gateway.translate import (
    AnthropicChatStream,
    anthropic_error_to_openai,
    anthropic_to_chat,
    chat_to_anthropic,
    json_tool_name,
)
from sandbox import SandboxServer, anthropic_key, reply_text

MODEL = "claude-sonnet-4-6"
CLIENT_MODEL = "anthropic/claude-sonnet-4-6"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
# 3 + 4 + 7 words: the sandbox bills every word of system and text content as a prompt token.
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": [{"type": "text", "text": "Answer in one line."}]},
    {"role": "user", "content": "one two three four five six seven"},
]
CHAT_WORDS = 14


@pytest.fixture
def claude(sandbox: SandboxServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key=anthropic_key(), base_url=sandbox.anthropic_base_url, max_retries=0) as client:
        yield client


def translate(**body: Any) -> dict[str, Any]:
    body.setdefault("model", CLIENT_MODEL)
    body.setdefault("messages", CHAT)
    return chat_to_anthropic(body, vendor_model=MODEL, max_output_tokens=64)


# The anthropic 2.x SDK has no keyword for the sampling parameters the API still takes (on the
# models that kept them): they travel in extra_body, as its users send them.
SAMPLING = ("temperature", "top_p")


def create(client: anthropic.Anthropic, request: dict[str, Any]) -> Any:
    sampling = {key: request[key] for key in SAMPLING if key in request}
    rest = {key: value for key, value in request.items() if key not in SAMPLING}
    return client.messages.create(**rest, extra_body=sampling or None)


def answer(client: anthropic.Anthropic, request: dict[str, Any], json_tool: str | None = None) -> dict[str, Any]:
    message = create(client, request)
    return anthropic_to_chat(message.model_dump(mode="json"), model=CLIENT_MODEL, json_tool=json_tool)


def streamed(
    client: anthropic.Anthropic, request: dict[str, Any], *, include_usage: bool, json_tool: str | None = None
) -> list[dict[str, Any]]:
    translator = AnthropicChatStream(CLIENT_MODEL, include_usage=include_usage, json_tool=json_tool)
    chunks = []
    with create(client, request) as events:
        for event in events:
            chunks.extend(translator.feed(event.type, event.model_dump(mode="json")))
    assert translator.done
    return chunks


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])


def test_a_translated_request_reaches_the_provider_as_built_and_its_answer_translates_back(
    sandbox: SandboxServer, claude: anthropic.Anthropic
) -> None:
    request = translate(max_tokens=20, temperature=0.5, stop=["END"], user="user-7")

    chat = answer(claude, request)

    assert sandbox.log.records()[-1]["body"] == request
    assert chat["id"].startswith("chatcmpl-msg_")
    assert chat["model"] == CLIENT_MODEL
    words = chat["usage"]["completion_tokens"]  # the sandbox answers a fixed reply, one token a word
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": reply_text(words), "refusal": None}
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert chat["usage"]["prompt_tokens"] == CHAT_WORDS
    assert chat["usage"]["total_tokens"] == CHAT_WORDS + words


def test_an_answer_cut_by_max_tokens_finishes_with_length(claude: anthropic.Anthropic) -> None:
    chat = answer(claude, translate(max_completion_tokens=3))

    assert chat["choices"][0]["finish_reason"] == "length"
    assert chat["choices"][0]["message"]["content"] == reply_text(3)


def test_cache_reads_are_prompt_tokens_and_reported_as_cached(sandbox: SandboxServer) -> None:
    with anthropic.Anthropic(
        api_key=anthropic_key("cached"), base_url=sandbox.anthropic_base_url, max_retries=0
    ) as client:
        chat = answer(client, translate(max_tokens=5))

    assert chat["usage"]["prompt_tokens"] == CHAT_WORDS
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] == CHAT_WORDS // 2


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_translated_stream_says_what_the_json_answer_says(claude: anthropic.Anthropic, include_usage: bool) -> None:
    whole = answer(claude, translate(max_tokens=12))
    request = translate(max_tokens=12, stream=True, stream_options={"include_usage": include_usage})

    chunks = streamed(claude, request, include_usage=include_usage)

    assert content_of(chunks) == whole["choices"][0]["message"]["content"]
    finishes = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"]]
    assert finishes == ["stop"]
    assert len({chunk["id"] for chunk in chunks}) == 1
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == whole["usage"]
        assert all(chunk["usage"] is None for chunk in chunks[:-1])
    else:
        assert all("usage" not in chunk for chunk in chunks)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def tool_calls_of(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls an OpenAI client library assembles from the chunks' deltas."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls", []):
                call = calls.setdefault(delta["index"], {"id": None, "name": None, "arguments": ""})
                call["id"] = delta.get("id", call["id"])
                call["name"] = delta["function"].get("name", call["name"])
                call["arguments"] += delta["function"].get("arguments", "")
    return [calls[index] for index in sorted(calls)]


def test_a_tool_call_and_its_streamed_deltas_translate_to_the_same_call(claude: anthropic.Anthropic) -> None:
    whole = answer(claude, translate(tools=[WEATHER], tool_choice="required"))

    chunks = streamed(claude, translate(tools=[WEATHER], tool_choice="required", stream=True), include_usage=False)

    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert set(json.loads(call["function"]["arguments"])) == {"city", "days"}
    [streamed_call] = tool_calls_of(chunks)
    assert streamed_call["id"].startswith("toolu_")
    assert streamed_call["name"] == "get_weather"
    assert json.loads(streamed_call["arguments"]) == json.loads(call["function"]["arguments"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["tool_calls"]


def test_a_tool_round_trip_ends_in_an_answer(claude: anthropic.Anthropic) -> None:
    question = [{"role": "user", "content": "Weather in Paris for two days?"}]
    first = answer(claude, translate(tools=[WEATHER], messages=question))["choices"][0]["message"]
    [call] = first["tool_calls"]

    history = [*question, first, {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21°C"}]
    second = answer(claude, translate(tools=[WEATHER], messages=history))["choices"][0]

    assert second["finish_reason"] == "stop"
    assert second["message"]["content"]
    assert "tool_calls" not in second["message"]


@pytest.mark.parametrize(
    "response_format",
    [
        {
            "type": "json_schema",
            "json_schema": {
                "name": "sum",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "integer"}, "why": {"type": "string"}},
                    "required": ["answer", "why"],
                    "additionalProperties": False,
                },
            },
        },
        {"type": "json_object"},
    ],
)
def test_json_output_comes_back_as_json_content_streamed_or_not(
    claude: anthropic.Anthropic, response_format: dict[str, Any]
) -> None:
    body = {"response_format": response_format, "messages": [{"role": "user", "content": "Two plus two, as JSON"}]}
    json_tool = json_tool_name(body)

    whole = answer(claude, translate(**body), json_tool)["choices"][0]
    chunks = streamed(claude, translate(**body, stream=True), include_usage=False, json_tool=json_tool)

    assert whole["finish_reason"] == "stop"
    assert "tool_calls" not in whole["message"]
    parsed = json.loads(whole["message"]["content"])
    assert isinstance(parsed, dict)
    if response_format["type"] == "json_schema":
        assert set(parsed) == {"answer", "why"}
        assert isinstance(parsed["answer"], int)
    assert json.loads(content_of(chunks)) == parsed
    assert tool_calls_of(chunks) == []


def test_a_tool_history_with_images_is_accepted_as_translated(
    sandbox: SandboxServer, claude: anthropic.Anthropic
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "cat"}'}}
    request = translate(
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ],
        tool_choice="auto",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a small cat"},
        ],
        max_tokens=4,
    )

    chat = answer(claude, request)

    sent = sandbox.log.records()[-1]["body"]
    assert sent == request
    assert [block["type"] for block in sent["messages"][0]["content"]] == ["text", "image", "image"]
    assert sent["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "cat"}}
    ]
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "a small cat"}
    ]
    assert chat["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("word", "exception", "status", "openai_type", "code"),
    [
        ("invalid", anthropic.AuthenticationError, 401, "invalid_request_error", "invalid_api_key"),
        ("ratelimit", anthropic.RateLimitError, 429, "requests", "rate_limit_exceeded"),
        ("overloaded", anthropic.InternalServerError, 529, "server_error", "overloaded"),
        ("error", anthropic.InternalServerError, 500, "server_error", None),
    ],
)
def test_provider_errors_translate_to_openais_shape(
    sandbox: SandboxServer,
    word: str,
    exception: type[anthropic.APIStatusError],
    status: int,
    openai_type: str,
    code: str | None,
) -> None:
    with (
        anthropic.Anthropic(api_key=anthropic_key(word), base_url=sandbox.anthropic_base_url, max_retries=0) as client,
        pytest.raises(exception) as caught,
    ):
        create(client, translate())

    error = anthropic_error_to_openai(caught.value.status_code, caught.value.body)["error"]

    assert caught.value.status_code == status
    assert (error["type"], error["code"], error["param"]) == (openai_type, code, None)
    assert error["message"]
