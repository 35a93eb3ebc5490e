"""The price book: integer arithmetic, one round-up per charge, cached tokens discounted."""

from __future__ import annotations

import pytest

from core import errors
from credits import pricing
from credits.pricing import (
    MODEL_PRICES,
    UNIT_PRICES,
    LlmUsage,
    price_llm_call,
    price_llm_usage,
    price_llm_worst_case,
    price_units,
)

ROUTING_PRICE_KEYS = [
    "claude-sonnet-4",
    "claude-opus-4",
    "claude-haiku-4",
    "apex",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "text-embedding-3-small",
    "text-embedding-3-large",
]


@pytest.mark.parametrize("key", ROUTING_PRICE_KEYS)
def test_every_routing_price_key_is_in_the_book(key: str) -> None:
    price = MODEL_PRICES[key]
    assert all(isinstance(value, int) and value >= 0 for value in (price.input, price.output, price.cached_input))
    assert price.cached_input <= price.input


def test_unit_prices_cover_every_metered_category() -> None:
    assert set(UNIT_PRICES) == {"embeddings", "tool_call", "voice_tts", "voice_stt", "enrichment", "telephony"}


def test_llm_call_is_exact_integer_arithmetic() -> None:
    # Sonnet: 300,000 mc / M input, 1,500,000 mc / M output.
    assert price_llm_call("claude-sonnet-4", 1_000_000, 0) == 300_000
    assert price_llm_call("claude-sonnet-4", 1_000, 1_000) == 300 + 1_500
    assert price_llm_call("claude-sonnet-4", 0, 0) == 0


def test_each_charge_rounds_up_once_to_the_whole_millicredit() -> None:
    # One Haiku input token costs 0.1 mc: rounds up to 1.
    assert price_llm_call("claude-haiku-4", 1, 0) == 1
    # Ten tokens cost exactly 1 mc: no extra rounding.
    assert price_llm_call("claude-haiku-4", 10, 0) == 1
    # Rounded once on the total, not per component: 5 in (0.5 mc) + 1 out (0.5 mc) = 1 mc, not 2.
    assert price_llm_call("claude-haiku-4", 5, 1) == 1
    assert price_llm_call("claude-haiku-4", 11, 0) == 2


def test_cached_input_tokens_are_billed_at_the_discounted_rate() -> None:
    full = price_llm_call("claude-sonnet-4", 1_000_000, 0, 0)
    cached = price_llm_call("claude-sonnet-4", 1_000_000, 0, 1_000_000)
    half = price_llm_call("claude-sonnet-4", 1_000_000, 0, 500_000)
    assert cached == MODEL_PRICES["claude-sonnet-4"].cached_input == full // 10
    assert half == (full + cached) // 2
    assert price_llm_usage("claude-sonnet-4", LlmUsage(1_000_000, 0, 1_000_000)) == cached


def test_worst_case_is_the_uncached_prompt_plus_max_tokens() -> None:
    assert price_llm_worst_case("gpt-5", 2_000, 1_000) == price_llm_call("gpt-5", 2_000, 1_000, 0)


def test_unit_prices_round_up() -> None:
    assert price_units("tool_call", 3) == 300
    assert price_units("embeddings", 1) == 1  # 2 mc per 1K tokens: 0.002 mc rounds up to 1
    assert price_units("embeddings", 1_000) == 2
    assert price_units("voice_stt", 61) == 610  # 600 mc a minute, billed by the second
    assert price_units("telephony", 60) == 1_500


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda: price_llm_call("llama-3-70b", 1, 1), "model_not_supported"),
        (lambda: price_llm_call("claude-sonnet-4", -1, 1), "invalid_input"),
        (lambda: price_llm_call("claude-sonnet-4", 1.5, 1), "invalid_input"),
        (lambda: price_llm_call("claude-sonnet-4", True, 1), "invalid_input"),
        (lambda: price_llm_call("claude-sonnet-4", 10, 1, 11), "invalid_input"),  # cached > input
        (lambda: price_llm_call("claude-sonnet-4", pricing.MAX_TOKENS + 1, 0), "invalid_input"),
        (lambda: price_units("tool_call", 0), "invalid_input"),
        (lambda: price_units("tool_call", -3), "invalid_input"),
        (lambda: price_units("tool_call", 2.0), "invalid_input"),
        (lambda: price_units("tool_call", "2"), "invalid_input"),
        (lambda: price_units("teleportation", 1), "unknown_category"),
    ],
)
def test_bad_pricing_input_is_a_catalogue_error(call: object, code: str) -> None:
    with pytest.raises(errors.NiyraError) as raised:
        call()  # type: ignore[operator]
    assert raised.value.code == code
    assert raised.value.status == 400


def test_book_is_read_only() -> None:
    with pytest.raises(TypeError):
        MODEL_PRICES["gpt-5"] = MODEL_PRICES["gpt-4o"]  # type: ignore[index]
