"""OpenAI chat ⇄ Anthropic messages: every mapping both ways, and every refusal naming its parameter."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from routing.gateway.translate import (
    JSON_OBJECT_TOOL,
    AnthropicChatStream,
    StreamError,
    Untranslatable,
    anthropic_error_to_openai,
    anthropic_to_chat,
    chat_to_anthropic,
    json_tool_name,
)

MODEL = "claude-sonnet-4-6"
CEILING = 64_000
HI = [{"role": "user", "content": "Hi"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def translate(**body: Any) -> dict[str, Any]:
    body.setdefault("model", "anthropic/claude-sonnet-4-6")
    body.setdefault("messages", HI)
    return chat_to_anthropic(body, vendor_model=MODEL, max_output_tokens=CEILING)


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def untranslatable(**body: Any) -> Untranslatable:
    with pytest.raises(Untranslatable) as caught:
        translate(**body)
    return caught.value


# --- Request ----------------------------------------------------------------------------------


def test_a_plain_message_becomes_an_anthropic_request_with_the_models_ceiling() -> None:
    assert translate() == {
        "model": MODEL,
        "max_tokens": CEILING,
        "messages": [{"role": "user", "content": [text("Hi")]}],
    }


def test_system_and_developer_messages_go_to_system_in_order_wherever_they_stand() -> None:
    request = translate(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [text("Answer in French."), text("No emoji.")]},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "system", "content": "Stay polite."},
            {"role": "user", "content": "Ça va ?"},
        ]
    )

    assert request["system"] == [text("Be brief."), text("Answer in French."), text("No emoji."), text("Stay polite.")]
    assert request["messages"] == [
        {"role": "user", "content": [text("Hi")]},
        {"role": "assistant", "content": [text("Bonjour")]},
        {"role": "user", "content": [text("Ça va ?")]},
    ]


def test_consecutive_messages_of_one_role_merge_into_one_turn() -> None:
    request = translate(
        messages=[
            {"role": "user", "content": "One"},
            {"role": "user", "content": [text("Two")]},
            {"role": "assistant", "content": "Three"},
            {"role": "assistant", "content": [text("Four")]},
        ]
    )

    assert request["messages"] == [
        {"role": "user", "content": [text("One"), text("Two")]},
        {"role": "assistant", "content": [text("Three"), text("Four")]},
    ]


@pytest.mark.parametrize("detail", [None, "auto", "low", "high"])
def test_images_as_data_urls_become_base64_blocks_and_https_urls_url_blocks(detail: str | None) -> None:
    def part(url: str) -> dict[str, Any]:
        image: dict[str, Any] = {"url": url} if detail is None else {"url": url, "detail": detail}
        return {"type": "image_url", "image_url": image}

    request = translate(
        messages=[
            {
                "role": "user",
                "content": [
                    text("What is in these?"),
                    part(f"data:image/png;base64,{PNG}"),
                    part("https://example.com/cat.jpg"),
                ],
            }
        ]
    )

    assert request["messages"][0]["content"] == [
        text("What is in these?"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize("media", ["image/jpeg", "image/png", "image/gif", "image/webp", "IMAGE/PNG"])
def test_every_image_type_anthropic_takes_is_accepted(media: str) -> None:
    url = f"data:{media};base64,{PNG}"
    request = translate(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])

    assert request["messages"][0]["content"][0]["source"]["media_type"] == media.lower()


def test_a_tool_round_trip_becomes_tool_use_and_merged_tool_results() -> None:
    request = translate(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                ],
                "refusal": None,
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [text("4°C"), text(", snow")]},
            {"role": "user", "content": "Which is warmer?"},
        ],
    )

    assert request["messages"] == [
        {"role": "user", "content": [text("Weather in Paris and Oslo?")]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [text("4°C"), text(", snow")]},
                text("Which is warmer?"),
            ],
        },
    ]
    assert request["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]


def test_assistant_text_beside_tool_calls_comes_first_and_an_empty_tool_result_has_no_content() -> None:
    request = translate(
        messages=[
            {"role": "user", "content": "Ping"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "ping", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c", "content": ""},
        ]
    )

    assert request["messages"][1]["content"] == [
        text("Checking."),
        {"type": "tool_use", "id": "c", "name": "ping", "input": {}},
    ]
    assert request["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "c"}]


def test_a_tool_without_parameters_gets_an_empty_object_schema_and_strict_carries_over() -> None:
    request = translate(tools=[{"type": "function", "function": {"name": "now", "strict": True}}])

    assert request["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}, "strict": True}]


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        (None, True, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),
    ],
)
def test_tool_choice_and_parallel_tool_calls(tool_choice: Any, parallel: bool | None, expected: Any) -> None:
    request = translate(tools=[WEATHER_TOOL], tool_choice=tool_choice, parallel_tool_calls=parallel)

    assert request.get("tool_choice") == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_tokens": 300}, {"max_tokens": 300}),
        ({"max_completion_tokens": 200}, {"max_tokens": 200}),
        ({"max_tokens": 100, "max_completion_tokens": 100}, {"max_tokens": 100}),
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
        ({"temperature": 1}, {"temperature": 1}),
        ({"stop": "END"}, {"stop_sequences": ["END"]}),
        ({"stop": ["END", "\n\nHuman:"]}, {"stop_sequences": ["END", "\n\nHuman:"]}),
        ({"stop": []}, {}),
        ({"stream": True}, {"stream": True}),
        ({"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),
        ({"user": "user-42"}, {"metadata": {"user_id": "user-42"}}),
        ({"response_format": {"type": "text"}}, {}),
    ],
)
def test_sampling_and_limits_map_to_anthropics_names(body: dict[str, Any], expected: dict[str, Any]) -> None:
    request = translate(**body)

    assert {key: value for key, value in request.items() if key not in ("model", "messages")} == {
        "max_tokens": CEILING,
        **expected,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"n": 1},
        {"logprobs": False},
        {"logit_bias": {}},
        {"presence_penalty": 0, "frequency_penalty": 0.0},
        {"modalities": ["text"]},
        {"store": False},
        {"metadata": {}},
        {"service_tier": "auto"},
        # Explicit nulls mean "not sent", as at OpenAI (SDKs and proxies send them).
        {"seed": None, "logprobs": None, "tools": None, "stop": None, "temperature": None, "user": None},
    ],
)
def test_parameters_at_the_value_that_asks_for_nothing_are_accepted(body: dict[str, Any]) -> None:
    assert translate(**body) == translate()


def test_an_assistant_message_sent_back_as_the_sdk_returned_it_is_accepted() -> None:
    answered = anthropic_to_chat(tool_answer(), model=MODEL)["choices"][0]["message"]

    request = translate(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            answered,
            {"role": "tool", "tool_call_id": "toolu_01", "content": "18°C"},
        ],
    )

    assert request["messages"][1] == {
        "role": "assistant",
        "content": [
            text("Let me look."),
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
        ],
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"seed": 7}, "seed"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"store": True}, "store"),
        ({"metadata": {"team": "a"}}, "metadata"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"verbosity": "low"}, "verbosity"),
        ({"max_tokens": 100, "max_completion_tokens": 200}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "9"}, "max_completion_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"stop": "\n"}, "stop"),
        ({"stop": ["END", " "]}, "stop[1]"),
        ({"stop": [3]}, "stop[0]"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_obfuscation": False}}, "stream_options.include_obfuscation"),
        ({"user": 42}, "user"),
        ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "extra": 1}}]}, "tools[0].function.extra"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice.type"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_object"}, "tools": [WEATHER_TOOL]}, "tools"),
        ({"response_format": {"type": "json_object"}, "tool_choice": "auto"}, "tool_choice"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "l", "schema": {"type": "array"}}}},
            "response_format.json_schema.schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
            "response_format.json_schema.name",
        ),
    ],
)
def test_a_top_level_parameter_anthropic_cannot_express_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    assert untranslatable(**body).param == param


def data_image(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("Hi", "messages"),
        ([], "messages"),
        ([{"role": "system", "content": "Only a system prompt"}], "messages"),
        ([{"role": "user", "content": "Hi", "name": "ada"}], "messages[0].name"),
        ([{"role": "function", "name": "f", "content": "x"}], "messages[0].name"),
        ([{"role": "function", "content": "x"}], "messages[0].role"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        (["Hi"], "messages[0]"),
        ([{"role": "user", "content": ""}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0].type"),
        ([{"role": "user", "content": [text("x"), {"type": "file", "file": {}}]}], "messages[0].content[1].type"),
        ([{"role": "user", "content": [{"type": "video"}]}], "messages[0].content[0].type"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {}}]}],
            "messages[0].content[0].cache_control",
        ),
        (data_image("data:image/tiff;base64,AAAA"), "messages[0].content[0].image_url.url"),
        (data_image("data:image/png,rawbytes"), "messages[0].content[0].image_url.url"),
        (data_image("http://example.com/cat.png"), "messages[0].content[0].image_url.url"),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://e.com/a.png", "detail": "max"}}],
                }
            ],
            "messages[0].content[0].image_url.detail",
        ),
        ([{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0].type"),
        (
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
            ],
            "messages[1].content[0].type",
        ),
        ([*HI, {"role": "assistant", "content": "x", "audio": {"id": "a1"}}], "messages[1].audio"),
        ([*HI, {"role": "assistant", "content": None}], "messages[1].content"),
        (
            [*HI, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1, 2]"}}]}],
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            [*HI, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{not json"}}]}],
            "messages[1].tool_calls[0].function.arguments",
        ),
        ([*HI, {"role": "assistant", "tool_calls": [{**CALL, "type": "custom"}]}], "messages[1].tool_calls[0].type"),
        (
            [*HI, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "x"}],
            "messages[2].tool_call_id",
        ),
        (
            [
                *HI,
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "image_url"}]},
            ],
            "messages[2].content[0].type",
        ),
    ],
)
def test_a_message_anthropic_cannot_express_is_refused_by_its_path(messages: Any, param: str) -> None:
    error = untranslatable(messages=messages)

    assert error.param == param
    assert error.message
    assert str(error).startswith(f"{param}: ")


def test_the_refusal_of_n_says_what_to_do() -> None:
    assert "n=1" in untranslatable(n=3).message


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(Untranslatable) as caught:
        chat_to_anthropic([], vendor_model=MODEL, max_output_tokens=CEILING)  # type: ignore[arg-type]

    assert caught.value.param == "body"


def test_translation_leaves_the_clients_body_as_it_was() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER_TOOL]}
    before = copy.deepcopy(body)

    chat_to_anthropic(body, vendor_model=MODEL, max_output_tokens=CEILING)

    assert body == before


SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


@pytest.mark.parametrize(
    ("response_format", "tool"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "sum", "schema": SCHEMA, "strict": True}},
            {
                "name": "sum",
                "description": "Give your answer as this tool's input, matching its schema.",
                "input_schema": SCHEMA,
                "strict": True,
            },
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "sum", "description": "The sum", "schema": SCHEMA}},
            {"name": "sum", "description": "The sum", "input_schema": SCHEMA},
        ),
        (
            {"type": "json_object"},
            {
                "name": JSON_OBJECT_TOOL,
                "description": "Give your answer as this tool's input: one JSON object.",
                "input_schema": {"type": "object"},
            },
        ),
    ],
)
def test_json_output_is_a_forced_tool(response_format: dict[str, Any], tool: dict[str, Any]) -> None:
    body = {"messages": HI, "response_format": response_format}
    request = translate(**body)

    assert request["tools"] == [tool]
    assert request["tool_choice"] == {"type": "tool", "name": tool["name"]}
    assert json_tool_name(body) == tool["name"]


@pytest.mark.parametrize("response_format", [None, {"type": "text"}])
def test_plain_text_answers_have_no_json_tool(response_format: Any) -> None:
    assert json_tool_name({"messages": HI, "response_format": response_format}) is None
    assert json_tool_name({"messages": HI}) is None


# --- Response ---------------------------------------------------------------------------------


def anthropic_message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def tool_answer() -> dict[str, Any]:
    return anthropic_message(
        [
            text("Let me look."),
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        stop_reason="tool_use",
    )


def test_a_text_answer_becomes_a_chat_completion() -> None:
    payload = anthropic_message(
        [text("Hello"), text(" there")], cache_creation_input_tokens=3, cache_read_input_tokens=100
    )

    chat = anthropic_to_chat(payload, model="anthropic/claude-sonnet-4-6")

    assert isinstance(chat.pop("created"), int)
    assert chat == {
        "id": "chatcmpl-msg_01",
        "object": "chat.completion",
        "model": "anthropic/claude-sonnet-4-6",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 113,
            "completion_tokens": 5,
            "total_tokens": 118,
            "prompt_tokens_details": {"cached_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def test_tool_use_becomes_tool_calls_with_json_arguments() -> None:
    message = anthropic_to_chat(tool_answer(), model=MODEL)["choices"][0]

    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] == "Let me look."
    assert message["message"]["tool_calls"] == [
        {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]


def test_an_answer_of_only_tool_calls_has_null_content() -> None:
    payload = anthropic_message([{"type": "tool_use", "id": "t", "name": "now", "input": {}}], stop_reason="tool_use")

    message = anthropic_to_chat(payload, model=MODEL)["choices"][0]["message"]

    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


def test_thinking_blocks_are_not_part_of_the_answer() -> None:
    payload = anthropic_message([{"type": "thinking", "thinking": "hmm", "signature": "s"}, text("42")])

    assert anthropic_to_chat(payload, model=MODEL)["choices"][0]["message"]["content"] == "42"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reasons_become_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    payload = anthropic_message([text("x")], stop_reason=stop_reason)

    assert anthropic_to_chat(payload, model=MODEL)["choices"][0]["finish_reason"] == finish_reason


def test_the_json_tools_input_comes_back_as_the_message_content() -> None:
    body = {
        "messages": HI,
        "response_format": {"type": "json_schema", "json_schema": {"name": "sum", "schema": SCHEMA}},
    }
    payload = anthropic_message(
        [{"type": "tool_use", "id": "t", "name": "sum", "input": {"answer": 4}}], stop_reason="tool_use"
    )

    choice = anthropic_to_chat(payload, model=MODEL, json_tool=json_tool_name(body))["choices"][0]

    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": '{"answer":4}', "refusal": None}
    assert json.loads(choice["message"]["content"]) == {"answer": 4}


# --- Stream -----------------------------------------------------------------------------------


def events_for(message: dict[str, Any], piece: int = 5) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events Anthropic streams for `message`, tool input cut into `piece`-character deltas."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    events.append(("ping", {"type": "ping"}))
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                ("content_block_start", {"type": "content_block_start", "index": index, "content_block": text("")})
            )
            for k in range(0, len(block["text"]), piece):
                delta = {"type": "text_delta", "text": block["text"][k : k + piece]}
                events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        else:
            opened = {**block, "input": {}}
            events.append(
                ("content_block_start", {"type": "content_block_start", "index": index, "content_block": opened})
            )
            arguments = json.dumps(block["input"])  # Anthropic's own spacing, not ours
            # Anthropic opens with an empty delta, then sends the input in pieces.
            for partial in ["", *(arguments[k : k + piece] for k in range(0, len(arguments), piece))]:
                delta = {"type": "input_json_delta", "partial_json": partial}
                events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    final = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    events.append(
        (
            "message_delta",
            {"type": "message_delta", "delta": final, "usage": {"output_tokens": message["usage"]["output_tokens"]}},
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def run(stream: AnthropicChatStream, events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    chunks = []
    for event, data in events:
        assert not stream.done
        chunks.extend(stream.feed(event, data))
    assert stream.done
    return chunks


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI client library builds from the chunks."""
    content = ""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls", []):
                into = calls.setdefault(call["index"], {"function": {"arguments": ""}})
                for key in ("id", "type"):
                    if key in call:
                        into[key] = call[key]
                into["function"].setdefault("name", call["function"].get("name"))
                into["function"]["arguments"] += call["function"].get("arguments", "")
            finish = choice["finish_reason"] or finish
    return {"content": content, "tool_calls": [calls[k] for k in sorted(calls)], "finish_reason": finish}


def test_a_text_stream_becomes_chunks_with_one_id() -> None:
    stream = AnthropicChatStream("anthropic/claude-sonnet-4-6", include_usage=False)
    chunks = run(stream, events_for(anthropic_message([text("Hello there, friend")])))

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-msg_01"}
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk["model"] for chunk in chunks} == {"anthropic/claude-sonnet-4-6"}
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert reassemble(chunks)["content"] == "Hello there, friend"


def test_with_include_usage_every_chunk_has_null_usage_and_a_last_chunk_has_the_usage() -> None:
    message = anthropic_message([text("Hi")], cache_creation_input_tokens=2, cache_read_input_tokens=30)
    message["usage"]["output_tokens"] = 7

    chunks = run(AnthropicChatStream(MODEL, include_usage=True), events_for(message))

    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["id"] == "chatcmpl-msg_01"
    assert chunks[-1]["usage"] == anthropic_to_chat(message, model=MODEL)["usage"]
    assert chunks[-1]["usage"]["prompt_tokens"] == 42


def test_message_delta_usage_that_reports_the_input_again_wins() -> None:
    stream = AnthropicChatStream(MODEL, include_usage=True)
    events = events_for(anthropic_message([text("Hi")]))
    events[-2][1]["usage"] = {"input_tokens": 12, "cache_read_input_tokens": 4, "output_tokens": 9}

    usage = run(stream, events)[-1]["usage"]

    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (16, 9)


def test_streamed_tool_call_deltas_reassemble_to_the_non_streamed_answer() -> None:
    message = anthropic_message(
        [
            text("Checking both."),
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo — Norway"}},
        ],
        stop_reason="tool_use",
    )
    whole = anthropic_to_chat(message, model=MODEL)["choices"][0]

    streamed = reassemble(run(AnthropicChatStream(MODEL, include_usage=False), events_for(message, piece=3)))

    assert streamed["content"] == whole["message"]["content"]
    assert streamed["finish_reason"] == whole["finish_reason"] == "tool_calls"
    assert [call["id"] for call in streamed["tool_calls"]] == [call["id"] for call in whole["message"]["tool_calls"]]
    assert [call["function"]["name"] for call in streamed["tool_calls"]] == ["get_weather", "get_weather"]
    assert [json.loads(call["function"]["arguments"]) for call in streamed["tool_calls"]] == [
        json.loads(call["function"]["arguments"]) for call in whole["message"]["tool_calls"]
    ]


def test_the_first_tool_call_chunk_names_the_call_with_empty_arguments() -> None:
    message = anthropic_message(
        [{"type": "tool_use", "id": "toolu_a", "name": "now", "input": {}}], stop_reason="tool_use"
    )

    chunks = run(AnthropicChatStream(MODEL, include_usage=False), events_for(message))

    assert chunks[1]["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "now", "arguments": ""}}]
    }


def test_a_streamed_json_tool_becomes_content() -> None:
    message = anthropic_message(
        [{"type": "tool_use", "id": "t", "name": "sum", "input": {"answer": 4}}], stop_reason="tool_use"
    )

    streamed = reassemble(
        run(AnthropicChatStream(MODEL, include_usage=False, json_tool="sum"), events_for(message, piece=2))
    )

    assert streamed["tool_calls"] == []
    assert json.loads(streamed["content"]) == {"answer": 4}
    assert streamed["finish_reason"] == "stop"


def test_an_error_event_raises_stream_error_with_the_payload() -> None:
    stream = AnthropicChatStream(MODEL, include_usage=False)
    stream.feed("message_start", events_for(anthropic_message([text("x")]))[0][1])
    payload = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

    with pytest.raises(StreamError) as caught:
        stream.feed("error", payload)

    assert caught.value.payload == payload
    assert str(caught.value) == "Overloaded"
    assert not stream.done


def test_events_without_an_event_name_are_read_by_their_type() -> None:
    stream = AnthropicChatStream(MODEL, include_usage=False)
    chunks = [chunk for _, data in events_for(anthropic_message([text("Hi")])) for chunk in stream.feed(None, data)]

    assert reassemble(chunks)["content"] == "Hi"
    assert stream.done


# --- Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "anthropic_type", "openai_type", "code"),
    [
        (400, "invalid_request_error", "invalid_request_error", None),
        (401, "authentication_error", "invalid_request_error", "invalid_api_key"),
        (403, "permission_error", "invalid_request_error", "permission_denied"),
        (404, "not_found_error", "invalid_request_error", "not_found"),
        (413, "request_too_large", "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "requests", "rate_limit_exceeded"),
        (500, "api_error", "server_error", None),
        (529, "overloaded_error", "server_error", "overloaded"),
    ],
)
def test_anthropic_errors_take_openais_shape(
    status: int, anthropic_type: str, openai_type: str, code: str | None
) -> None:
    payload = {"type": "error", "error": {"type": anthropic_type, "message": "Something specific"}}

    assert anthropic_error_to_openai(status, payload) == {
        "error": {"message": "Something specific", "type": openai_type, "param": None, "code": code}
    }


@pytest.mark.parametrize(("status", "openai_type"), [(502, "server_error"), (418, "invalid_request_error")])
def test_an_error_that_is_not_anthropics_shape_is_worded_from_its_status(status: int, openai_type: str) -> None:
    assert anthropic_error_to_openai(status, "<html>Bad gateway</html>") == {
        "error": {
            "message": f"The provider answered with HTTP {status}.",
            "type": openai_type,
            "param": None,
            "code": None,
        }
    }
