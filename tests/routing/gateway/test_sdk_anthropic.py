"""The official anthropic SDK, unchanged but for base_url and api_key, against Niyra's
/anthropic surface: every call is forwarded as sent and billed exactly from the usage the
provider (the sandbox) reported — in credits, or at zero cost on the user's own key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from credits.models import LedgerEntry
from credits.pricing import Usage, ceil_div, model_price, price_usage
from routing.models import RoutedCall
from sandbox.media import TINY_PNG
from sandbox.replies import REPLY_TEXT, THINKING_TEXT
from sandbox.schema import sample_for
from tests.routing.gateway.conftest import REPLY_WORDS, Niyra, Payer, anthropic_usage

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-4-6"
PRICE_KEY = "claude-sonnet-4"
HELLO: Any = [{"role": "user", "content": "Hello there, how are you?"}]  # 5 words
HELLO_WORDS = 5
WEATHER_SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
WEATHER_TOOL: Any = {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER_SCHEMA}
WEATHER_QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris today?"}]


def _text(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def _deltas(events: list[Any], kind: str, field: str) -> list[str]:
    """The `field` of every content_block_delta of `kind` (text_delta, input_json_delta...)."""
    return [getattr(e.delta, field) for e in events if e.type == "content_block_delta" and e.delta.type == kind]


def _tool_result_turn(first: Any) -> Any:
    """The conversation after the model's tool call, with the tool's result appended."""
    call = next(block for block in first.content if block.type == "tool_use")
    return [
        *WEATHER_QUESTION,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny and twenty degrees"}],
        },
    ]


class TestMessages:
    def test_plain_message(self, niyra: Niyra, payer: Payer) -> None:
        message = niyra.anthropic(payer.user).messages.create(model=MODEL, max_tokens=100, messages=HELLO)

        assert _text(message) == REPLY_TEXT
        assert message.stop_reason == "end_turn"
        assert (message.usage.input_tokens, message.usage.output_tokens) == (HELLO_WORDS, REPLY_WORDS)
        payer.assert_billed(MODEL, PRICE_KEY, Usage(HELLO_WORDS, REPLY_WORDS))

    def test_stream_helper(self, niyra: Niyra, payer: Payer) -> None:
        with niyra.anthropic(payer.user).messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()

        assert text == REPLY_TEXT == _text(final)
        assert anthropic_usage(final.usage) == Usage(HELLO_WORDS, REPLY_WORDS)
        payer.assert_billed(MODEL, PRICE_KEY, Usage(HELLO_WORDS, REPLY_WORDS))
        assert RoutedCall.objects.get(user=payer.user).stream is True

    def test_create_with_stream_true(self, niyra: Niyra, payer: Payer) -> None:
        events: list[Any] = list(
            niyra.anthropic(payer.user).messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True)
        )

        kinds = [event.type for event in events]
        deltas = _deltas(events, "text_delta", "text")
        assert (kinds[0], kinds[-1]) == ("message_start", "message_stop")
        assert "".join(deltas) == REPLY_TEXT
        assert len(deltas) == REPLY_WORDS
        payer.assert_billed(MODEL, PRICE_KEY, Usage(HELLO_WORDS, REPLY_WORDS))

    def test_a_short_max_tokens_is_honoured_and_billed_as_reported(self, niyra: Niyra, payer: Payer) -> None:
        message = niyra.anthropic(payer.user).messages.create(model=MODEL, max_tokens=3, messages=HELLO)

        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == 3
        payer.assert_billed(MODEL, PRICE_KEY, Usage(HELLO_WORDS, 3))


class TestTools:
    def test_tools_round_trip(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.anthropic(payer.user)

        first = client.messages.create(model=MODEL, max_tokens=500, tools=[WEATHER_TOOL], messages=WEATHER_QUESTION)
        call = next(block for block in first.content if block.type == "tool_use")
        second = client.messages.create(
            model=MODEL, max_tokens=500, tools=[WEATHER_TOOL], messages=_tool_result_turn(first)
        )

        assert first.stop_reason == "tool_use"
        assert (call.name, call.input) == ("get_weather", sample_for(WEATHER_SCHEMA))
        assert second.stop_reason == "end_turn"
        assert _text(second) == REPLY_TEXT
        payer.assert_billed(MODEL, PRICE_KEY, anthropic_usage(first.usage), anthropic_usage(second.usage))
        # The tool's definition and the result went to the provider as the client wrote them.
        sent = niyra.provider_requests("/v1/messages")
        assert [r["body"]["tools"] for r in sent] == [[WEATHER_TOOL], [WEATHER_TOOL]]
        assert sent[1]["body"]["messages"][2]["content"][0]["tool_use_id"] == call.id

    def test_tools_round_trip_streamed(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.anthropic(payer.user)

        with client.messages.stream(
            model=MODEL, max_tokens=500, tools=[WEATHER_TOOL], messages=WEATHER_QUESTION
        ) as stream:
            partial_json = _deltas(list(stream), "input_json_delta", "partial_json")
            first = stream.get_final_message()
        call = next(block for block in first.content if block.type == "tool_use")
        with client.messages.stream(
            model=MODEL, max_tokens=500, tools=[WEATHER_TOOL], messages=_tool_result_turn(first)
        ) as stream:
            answer = "".join(stream.text_stream)
            second = stream.get_final_message()

        assert first.stop_reason == "tool_use"
        assert len(partial_json) > 1, "the tool input arrives in pieces"
        assert json.loads("".join(partial_json)) == call.input == sample_for(WEATHER_SCHEMA)
        assert answer == REPLY_TEXT
        payer.assert_billed(MODEL, PRICE_KEY, anthropic_usage(first.usage), anthropic_usage(second.usage))


class TestImages:
    @pytest.mark.parametrize(
        "source",
        [
            {"type": "base64", "media_type": "image/png", "data": TINY_PNG},
            {"type": "url", "url": "https://example.com/cat.png"},
        ],
        ids=["base64", "url"],
    )
    def test_image_input(self, niyra: Niyra, payer: Payer, source: dict[str, Any]) -> None:
        messages: Any = [
            {
                "role": "user",
                "content": [{"type": "image", "source": source}, {"type": "text", "text": "What is in this picture?"}],
            }
        ]

        message = niyra.anthropic(payer.user).messages.create(model=MODEL, max_tokens=100, messages=messages)

        assert _text(message) == REPLY_TEXT
        assert message.usage.input_tokens > 5, "the image counts as input"
        payer.assert_billed(MODEL, PRICE_KEY, anthropic_usage(message.usage))
        assert niyra.provider_requests("/v1/messages")[0]["body"]["messages"] == messages


class TestPromptCaching:
    def test_a_cache_write_then_a_cache_read_are_billed_at_cache_prices(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.anthropic(payer.user)
        system: Any = [
            {
                "type": "text",
                "text": "You are a careful assistant who answers questions about the weather. " * 20,
                "cache_control": {"type": "ephemeral"},
            }
        ]

        write = client.messages.create(model=MODEL, max_tokens=100, system=system, messages=HELLO)
        read = client.messages.create(model=MODEL, max_tokens=100, system=system, messages=HELLO)

        assert write.usage.cache_creation_input_tokens and not write.usage.cache_read_input_tokens
        assert read.usage.cache_read_input_tokens and not read.usage.cache_creation_input_tokens
        assert read.usage.cache_read_input_tokens == write.usage.cache_creation_input_tokens
        used = anthropic_usage(write.usage), anthropic_usage(read.usage)
        payer.assert_billed(MODEL, PRICE_KEY, *used)
        # Priced at the cache rates, not the input rate: computed here from the rates themselves.
        rates = model_price(PRICE_KEY)
        assert rates.cache_write > rates.input > rates.cache_read
        by_hand = [
            ceil_div(
                (u.input_tokens - u.cached_tokens - u.cache_write_tokens) * rates.input
                + u.cache_write_tokens * rates.cache_write
                + u.cached_tokens * rates.cache_read
                + u.output_tokens * rates.output,
                1_000_000,
            )
            for u in used
        ]
        assert by_hand == [price_usage(PRICE_KEY, u) for u in used]
        assert by_hand[0] > by_hand[1]


class TestThinking:
    THINKING: Any = {"type": "enabled", "budget_tokens": 1024}

    def test_extended_thinking(self, niyra: Niyra, payer: Payer) -> None:
        message = niyra.anthropic(payer.user).messages.create(
            model=MODEL, max_tokens=2048, thinking=self.THINKING, messages=HELLO
        )

        thinking = [block for block in message.content if block.type == "thinking"]
        assert [block.thinking for block in thinking] == [THINKING_TEXT]
        assert thinking[0].signature
        assert _text(message) == REPLY_TEXT
        assert message.usage.output_tokens == len(THINKING_TEXT.split()) + REPLY_WORDS
        payer.assert_billed(MODEL, PRICE_KEY, anthropic_usage(message.usage))

    def test_extended_thinking_streamed(self, niyra: Niyra, payer: Payer) -> None:
        with niyra.anthropic(payer.user).messages.stream(
            model=MODEL, max_tokens=2048, thinking=self.THINKING, messages=HELLO
        ) as stream:
            thinking = _deltas(list(stream), "thinking_delta", "thinking")
            final = stream.get_final_message()

        assert "".join(thinking) == THINKING_TEXT
        assert _text(final) == REPLY_TEXT
        payer.assert_billed(MODEL, PRICE_KEY, anthropic_usage(final.usage))


class TestCountTokensAndModels:
    def test_count_tokens_is_free(self, niyra: Niyra, payer: Payer) -> None:
        counted = niyra.anthropic(payer.user).messages.count_tokens(model=MODEL, messages=HELLO)

        assert counted.input_tokens == HELLO_WORDS
        payer.assert_nothing_billed()
        assert not RoutedCall.objects.filter(user=payer.user).exists()
        assert len(niyra.provider_requests("/v1/messages/count_tokens")) == 1

    def test_models_list_shows_what_this_user_can_call(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.anthropic(payer.user)

        models = {model.id: model for model in client.models.list()}
        sonnet = client.models.retrieve(MODEL)

        assert MODEL in models and "claude-haiku-4-5" in models and "claude-opus-4-1" in models
        assert not any(model_id.startswith("gpt-") for model_id in models), "Anthropic models only"
        assert "apex" not in models, "Apex is for accounts with the entitlement"
        niyra_fields = (models[MODEL].model_extra or {})["niyra"]
        assert niyra_fields["available"] is True
        assert niyra_fields["key_source"] == payer.key_source
        assert (sonnet.id, sonnet.display_name) == (MODEL, "Claude Sonnet 4.6")
        payer.assert_nothing_billed()

    def test_apex_is_listed_for_an_entitled_user_with_a_key(
        self, niyra: Niyra, make_account: Any, store_key: Any
    ) -> None:
        user = make_account(plan="pro", apex=True)
        store_key(user, "anthropic", "sk-ant-api03-try-apex-0000000000")

        apex = niyra.anthropic(user).models.retrieve("apex")

        assert apex.id == "apex"
        assert (apex.model_extra or {})["niyra"]["key_source"] == "byok"


class TestNothingSilentlyDropped:
    def test_an_unknown_field_and_the_provider_headers_reach_the_provider(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.anthropic(payer.user)
        client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=HELLO,
            metadata={"user_id": "agent-7"},
            extra_body={"niyra_test_field": {"x": 1}},
            extra_headers={"anthropic-beta": "prompt-caching-2024-07-31", "idempotency-key": "call-0001"},
        )

        (request,) = niyra.provider_requests("/v1/messages")
        assert request["body"] == {
            "model": MODEL,
            "max_tokens": 100,
            "messages": HELLO,
            "metadata": {"user_id": "agent-7"},
            "niyra_test_field": {"x": 1},
        }
        assert request["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
        assert request["headers"]["anthropic-version"] == client.default_headers["anthropic-version"]
        assert request["headers"]["idempotency-key"] == "call-0001"

    @pytest.mark.parametrize(
        ("sent", "forwarded", "listed"),
        [
            ("anthropic/claude-sonnet-4-6", "claude-sonnet-4-6", "claude-sonnet-4-6"),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "claude-sonnet-4-5"),
        ],
    )
    def test_a_niyra_model_id_becomes_the_providers_and_nothing_else_changes(
        self, niyra: Niyra, payer: Payer, sent: str, forwarded: str, listed: str
    ) -> None:
        niyra.anthropic(payer.user).messages.create(
            model=sent, max_tokens=100, messages=HELLO, extra_body={"niyra_test_field": [1, "two"]}
        )

        (request,) = niyra.provider_requests("/v1/messages")
        assert request["body"] == {
            "model": forwarded,
            "max_tokens": 100,
            "messages": HELLO,
            "niyra_test_field": [1, "two"],
        }
        payer.assert_billed(listed, PRICE_KEY, Usage(HELLO_WORDS, REPLY_WORDS))
        assert LedgerEntry.objects.filter(model=listed).count() == 1
