"""The official openai SDK on Niyra's universal surface (/v1): OpenAI's format for every model.
Anthropic models are translated both ways — tools, images, system and developer messages,
stop sequences, JSON output, streamed tool-call deltas, cached-token usage — and what the
translation can't express is a 400 naming the parameter, never dropped."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from credits.pricing import Usage
from routing.models import RoutedCall
from sandbox import anthropic_key, embedding_for
from sandbox.media import TINY_PNG
from sandbox.replies import REPLY_TEXT
from sandbox.schema import sample_for
from tests.routing.gateway.conftest import REPLY_WORDS, Niyra, Path, Payer, chat_usage

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-4-6"
PRICE_KEY = "claude-sonnet-4"
HELLO: Any = [{"role": "user", "content": "Hello there, how are you?"}]  # 5 words
HELLO_WORDS = 5
# The same message as Anthropic receives it: content as text blocks.
HELLO_BLOCKS: Any = [{"role": "user", "content": [{"type": "text", "text": "Hello there, how are you?"}]}]
WEATHER_SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER_SCHEMA},
}
WEATHER_QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris today?"}]


def _sent_to_anthropic(niyra: Niyra) -> list[dict[str, Any]]:
    return [r["body"] for r in niyra.provider_requests("/anthropic/v1/messages")]


class TestChat:
    def test_plain(self, niyra: Niyra, payer: Payer) -> None:
        completion = niyra.universal(payer.user).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100)

        assert completion.object == "chat.completion"
        assert completion.model == MODEL
        assert completion.choices[0].message.content == REPLY_TEXT
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert chat_usage(completion.usage) == Usage(HELLO_WORDS, REPLY_WORDS)
        payer.assert_billed(MODEL, PRICE_KEY, Usage(HELLO_WORDS, REPLY_WORDS))
        assert _sent_to_anthropic(niyra) == [{"model": MODEL, "max_tokens": 100, "messages": HELLO_BLOCKS}]

    @pytest.mark.parametrize("include_usage", [True, False])
    def test_streaming(self, niyra: Niyra, payer: Payer, include_usage: bool) -> None:
        options: Any = {"stream_options": {"include_usage": True}} if include_usage else {}

        chunks = list(
            niyra.universal(payer.user).chat.completions.create(
                model=MODEL, messages=HELLO, max_tokens=100, stream=True, **options
            )
        )

        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY_TEXT
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        reported = [c.usage for c in chunks if c.usage is not None]
        if include_usage:
            assert len(reported) == 1 and chat_usage(reported[0]) == Usage(HELLO_WORDS, REPLY_WORDS)
        else:
            assert reported == []
        payer.assert_billed(MODEL, PRICE_KEY, Usage(HELLO_WORDS, REPLY_WORDS))
        assert RoutedCall.objects.get(user=payer.user).stream is True

    def test_tools_round_trip(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.universal(payer.user)

        first = client.chat.completions.create(
            model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=500
        )
        message = first.choices[0].message
        assert message.tool_calls is not None
        call: Any = message.tool_calls[0]
        history: Any = [
            *WEATHER_QUESTION,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny and twenty degrees"},
        ]
        second = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL], max_tokens=500)

        assert first.choices[0].finish_reason == "tool_calls"
        assert (call.type, call.function.name) == ("function", "get_weather")
        assert json.loads(call.function.arguments) == sample_for(WEATHER_SCHEMA)
        assert second.choices[0].message.content == REPLY_TEXT
        assert first.usage is not None and second.usage is not None
        payer.assert_billed(MODEL, PRICE_KEY, chat_usage(first.usage), chat_usage(second.usage))
        # What Anthropic received: its own tool shape, tool_use and tool_result blocks.
        sent = _sent_to_anthropic(niyra)
        assert sent[0]["tools"] == [
            {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER_SCHEMA}
        ]
        assert sent[0]["tool_choice"] == {"type": "auto"}
        assistant, result = sent[1]["messages"][1], sent[1]["messages"][2]
        tool_use = next(b for b in assistant["content"] if b["type"] == "tool_use")
        assert (tool_use["id"], tool_use["name"], tool_use["input"]) == (
            call.id,
            "get_weather",
            sample_for(WEATHER_SCHEMA),
        )
        assert result["role"] == "user"
        assert result["content"][0]["type"] == "tool_result"
        assert result["content"][0]["tool_use_id"] == call.id

    def test_tools_round_trip_streamed(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.universal(payer.user)

        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=WEATHER_QUESTION,
                tools=[WEATHER_TOOL],
                max_tokens=500,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        pieces = [d.function.arguments for d in deltas if d.function and d.function.arguments]
        call_id = next(d.id for d in deltas if d.id)
        history: Any = [
            *WEATHER_QUESTION,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "".join(pieces)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "Sunny and twenty degrees"},
        ]
        answer = list(
            client.chat.completions.create(
                model=MODEL,
                messages=history,
                tools=[WEATHER_TOOL],
                max_tokens=500,
                stream=True,
                stream_options={"include_usage": True},
            )
        )

        assert {d.index for d in deltas} == {0}
        assert next(d.function.name for d in deltas if d.function and d.function.name) == "get_weather"
        assert len(pieces) > 1, "the arguments arrive in pieces, as Anthropic's input_json_delta did"
        assert json.loads("".join(pieces)) == sample_for(WEATHER_SCHEMA)
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
            "tool_calls"
        ]
        assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices) == REPLY_TEXT
        first_usage, second_usage = chunks[-1].usage, answer[-1].usage
        assert first_usage is not None and second_usage is not None
        payer.assert_billed(MODEL, PRICE_KEY, chat_usage(first_usage), chat_usage(second_usage))

    @pytest.mark.parametrize(
        ("url", "source"),
        [
            (
                f"data:image/png;base64,{TINY_PNG}",
                {"type": "base64", "media_type": "image/png", "data": TINY_PNG},
            ),
            ("https://example.com/cat.png", {"type": "url", "url": "https://example.com/cat.png"}),
        ],
        ids=["data", "https"],
    )
    def test_image_input(self, niyra: Niyra, payer: Payer, url: str, source: dict[str, Any]) -> None:
        messages: Any = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ]

        completion = niyra.universal(payer.user).chat.completions.create(model=MODEL, messages=messages, max_tokens=100)

        assert completion.choices[0].message.content == REPLY_TEXT
        assert completion.usage is not None and completion.usage.prompt_tokens > 5, "the image counts as input"
        payer.assert_billed(MODEL, PRICE_KEY, chat_usage(completion.usage))
        (sent,) = _sent_to_anthropic(niyra)
        assert sent["messages"][0]["content"] == [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image", "source": source},
        ]

    def test_system_and_developer_messages_and_stop_sequences(self, niyra: Niyra, payer: Payer) -> None:
        messages: Any = [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in English."},
            *HELLO,
        ]

        completion = niyra.universal(payer.user).chat.completions.create(
            model=MODEL, messages=messages, max_tokens=100, stop=["END", "STOP"], temperature=0.5, top_p=0.9
        )

        assert completion.choices[0].message.content == REPLY_TEXT
        (sent,) = _sent_to_anthropic(niyra)
        system = sent["system"]
        system_text = system if isinstance(system, str) else " ".join(block["text"] for block in system)
        assert "You are terse." in system_text and "Answer in English." in system_text
        assert sent["messages"] == HELLO_BLOCKS
        assert (sent["stop_sequences"], sent["temperature"], sent["top_p"]) == (["END", "STOP"], 0.5, 0.9)
        # The system prompt is input too: 5 + 3 + 3 words.
        payer.assert_billed(MODEL, PRICE_KEY, Usage(HELLO_WORDS + 6, REPLY_WORDS))

    def test_json_schema_output(self, niyra: Niyra, payer: Payer) -> None:
        completion = niyra.universal(payer.user).chat.completions.create(
            model=MODEL,
            messages=WEATHER_QUESTION,
            max_tokens=500,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "weather", "strict": True, "schema": WEATHER_SCHEMA},
            },
        )

        message = completion.choices[0].message
        assert message.content is not None and json.loads(message.content) == sample_for(WEATHER_SCHEMA)
        assert not message.tool_calls, "the structured output is the answer, not a tool call"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        payer.assert_billed(MODEL, PRICE_KEY, chat_usage(completion.usage))

    @pytest.mark.parametrize("path", ["credits", "byok"])
    def test_usage_with_cached_tokens(
        self, niyra: Niyra, make_account: Any, store_key: Any, settings: Any, path: Path
    ) -> None:
        # The `cached` key word: the provider reports half the prompt as read from its cache.
        settings.ANTHROPIC_API_KEY = anthropic_key("cached")
        user = make_account(plan="free" if path == "credits" else "pro")
        if path == "byok":
            store_key(user, "anthropic", anthropic_key("cached"))
        payer = Payer(path, user)
        messages: Any = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]

        completion = niyra.universal(payer.user).chat.completions.create(model=MODEL, messages=messages, max_tokens=100)

        assert completion.usage is not None
        assert completion.usage.prompt_tokens == 10
        assert completion.usage.prompt_tokens_details is not None
        assert completion.usage.prompt_tokens_details.cached_tokens == 5
        payer.assert_billed(MODEL, PRICE_KEY, Usage(10, REPLY_WORDS, cached_tokens=5))


class TestFirstPartyIds:
    @pytest.mark.parametrize(
        ("sent", "model", "price_key", "provider_path"),
        [
            ("anthropic/claude-sonnet-4-6", MODEL, PRICE_KEY, "/anthropic/v1/messages"),
            ("openai/gpt-4.1", "gpt-4.1", "gpt-4.1", "/openai/v1/chat/completions"),
        ],
    )
    def test_provider_prefixed_ids_are_the_first_party_providers(
        self, niyra: Niyra, payer: Payer, sent: str, model: str, price_key: str, provider_path: str
    ) -> None:
        completion = niyra.universal(payer.user).chat.completions.create(model=sent, messages=HELLO, max_tokens=100)

        assert completion.choices[0].message.content == REPLY_TEXT
        (request,) = niyra.provider_requests(provider_path)
        assert request["body"]["model"] == model
        payer.assert_billed(model, price_key, Usage(HELLO_WORDS, REPLY_WORDS))

    def test_openai_models_pass_through_untouched(self, niyra: Niyra, payer: Payer) -> None:
        niyra.universal(payer.user).chat.completions.create(
            model="gpt-4.1", messages=HELLO, n=2, logprobs=True, extra_body={"niyra_test_field": {"x": 1}}
        )

        (request,) = niyra.provider_requests("/openai/v1/chat/completions")
        assert request["body"] == {
            "model": "gpt-4.1",
            "messages": HELLO,
            "n": 2,
            "logprobs": True,
            "niyra_test_field": {"x": 1},
        }


class TestUntranslatable:
    @pytest.mark.parametrize(
        ("params", "param"),
        [
            ({"n": 2}, "n"),
            ({"logprobs": True}, "logprobs"),
            ({"temperature": 1.5}, "temperature"),
            ({"extra_body": {"niyra_test_field": {"x": 1}}}, "niyra_test_field"),
            (
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}],
                        }
                    ]
                },
                "messages[0].content[0]",
            ),
        ],
        ids=["n", "logprobs", "temperature", "unknown-field", "input_audio"],
    )
    def test_is_a_400_naming_the_parameter(
        self, niyra: Niyra, payer: Payer, params: dict[str, Any], param: str
    ) -> None:
        call: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 100} | params

        with pytest.raises(openai.BadRequestError) as refused:
            niyra.universal(payer.user).chat.completions.create(**call)

        assert refused.value.status_code == 400
        assert refused.value.code == "unsupported_parameter"
        assert param in (refused.value.param or "") or param in refused.value.message
        assert niyra.provider_requests("/messages") == [], "nothing reached the provider"
        payer.assert_nothing_billed()


class TestModels:
    def test_models_list_and_retrieve_show_every_provider(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.universal(payer.user)

        models = {model.id for model in client.models.list()}
        claude = client.models.retrieve("anthropic/claude-sonnet-4-6")
        gpt = client.models.retrieve("gpt-4.1")

        assert {MODEL, "gpt-4.1", "text-embedding-3-small"} <= models
        assert (claude.id, claude.owned_by) == (MODEL, "anthropic")
        assert (gpt.id, gpt.owned_by) == ("gpt-4.1", "openai")
        payer.assert_nothing_billed()


class TestEmbeddings:
    def test_embeddings_with_the_sdks_defaults(self, niyra: Niyra, payer: Payer) -> None:
        """Always paid in credits, on the universal surface too."""
        result = niyra.universal(payer.user).embeddings.create(model="text-embedding-3-small", input="hello world")

        assert [item.embedding for item in result.data] == [embedding_for("hello world")]
        credits = Payer("credits", payer.user)
        credits.start = payer.start
        credits.assert_billed("text-embedding-3-small", "text-embedding-3-small", Usage(input_tokens=2))
