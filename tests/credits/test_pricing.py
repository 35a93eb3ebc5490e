"""The price book: exact integer arithmetic over every usage kind, one round-up per charge, and a
book file that is checked when it is read."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from core import errors
from credits import pricing
from credits.pricing import (
    MODEL_PRICES,
    PRICE_BOOK_PATH,
    PRICE_BOOK_VERSION,
    UNIT_PRICES,
    PriceBookError,
    Usage,
    price_book_load,
    price_units,
    price_usage,
)

# Ledger history and open holds name these: they must stay resolvable.
HISTORIC_PRICE_KEYS = [
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

# List prices in USD per million tokens (input, output, cache read), as millicredits: $1 = 100,000.
LIST_PRICES = {
    "claude-opus-4": (1_500_000, 7_500_000, 150_000),
    "claude-opus-4-5": (500_000, 2_500_000, 50_000),
    "claude-sonnet-4": (300_000, 1_500_000, 30_000),
    "claude-haiku-4": (100_000, 500_000, 10_000),
    "apex": (1_500_000, 7_500_000, 150_000),
    "gpt-4.1": (200_000, 800_000, 50_000),
    "gpt-4.1-mini": (40_000, 160_000, 10_000),
    "gpt-4.1-nano": (10_000, 40_000, 2_500),
    "gpt-4o": (250_000, 1_000_000, 125_000),
    "gpt-4o-mini": (15_000, 60_000, 7_500),
    "gpt-5": (125_000, 1_000_000, 12_500),
    "gpt-5.2": (175_000, 1_400_000, 17_500),
    "gpt-5-mini": (25_000, 200_000, 2_500),
    "gpt-5-nano": (5_000, 40_000, 500),
    "text-embedding-3-small": (2_000, 0, 200),
    "text-embedding-3-large": (13_000, 0, 1_300),
    "gpt-4o-transcribe": (250_000, 1_000_000, 25_000),
    "gpt-4o-mini-transcribe": (125_000, 500_000, 12_500),
}


@pytest.mark.parametrize("key", HISTORIC_PRICE_KEYS)
def test_every_historic_price_key_is_still_in_the_book(key: str) -> None:
    price = MODEL_PRICES[key]
    rates = (price.input, price.output, price.cache_read, price.cache_write, price.audio_input, price.audio_output)
    assert all(isinstance(value, int) and value >= 0 for value in rates)
    assert price.cache_read <= price.input


@pytest.mark.parametrize(("key", "rates"), LIST_PRICES.items())
def test_the_book_charges_list_prices(key: str, rates: tuple[int, int, int]) -> None:
    price = MODEL_PRICES[key]
    assert (price.input, price.output, price.cache_read) == rates


def test_anthropic_cache_writes_cost_a_quarter_more_and_openai_writes_cost_input() -> None:
    for price in MODEL_PRICES.values():
        expected = price.input * 5 // 4 if price.provider == "anthropic" else price.input
        assert price.cache_write == expected, price.key


def test_voice_rates() -> None:
    def unit(key: str, name: str) -> tuple[int, int]:
        rate = getattr(MODEL_PRICES[key], name)
        return rate.millicredits, rate.per

    assert unit("tts-1", "per_character") == (1_500, 1_000)  # $15 per million characters
    assert unit("tts-1-hd", "per_character") == (3_000, 1_000)  # $30
    assert unit("gpt-4o-mini-tts", "per_character") == (1_200, 1_000)  # $12, the list-equivalent
    assert unit("whisper-1", "per_second") == (600, 60)  # $0.006 a minute
    assert MODEL_PRICES["gpt-4o-transcribe"].audio_input == 600_000  # $6 per million audio tokens
    assert MODEL_PRICES["gpt-4o-mini-transcribe"].audio_input == 300_000
    assert {MODEL_PRICES[key].category for key in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")} == {"voice_tts"}
    assert {MODEL_PRICES[key].category for key in ("whisper-1", "gpt-4o-transcribe")} == {"voice_stt"}


def test_unit_prices_of_the_metered_categories_are_unchanged() -> None:
    assert {category: (p.unit, p.per, p.millicredits) for category, p in UNIT_PRICES.items()} == {
        "embeddings": ("token", 1_000, 2),
        "tool_call": ("call", 1, 100),
        "voice_tts": ("character", 1_000, 1_500),
        "voice_stt": ("second", 60, 600),
        "enrichment": ("record", 1, 2_000),
        "telephony": ("second", 60, 1_500),
    }


def test_the_version_is_the_files() -> None:
    assert PRICE_BOOK_VERSION == price_book_load(PRICE_BOOK_PATH).version == "2026-12-06"


# --- Usage --------------------------------------------------------------------------------------


def test_usage_keeps_its_first_three_positions_and_lists_only_what_was_used() -> None:
    usage = Usage(10, 20, 5)
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (10, 20, 5)
    assert usage.as_dict() == {"input_tokens": 10, "output_tokens": 20, "cached_tokens": 5}
    assert Usage().as_dict() == {}
    assert Usage(characters=12, seconds=3).as_dict() == {"characters": 12, "seconds": 3}


# --- Pricing each kind --------------------------------------------------------------------------


def test_input_and_output_are_exact_integer_arithmetic() -> None:
    # Sonnet: 300,000 mc / M input, 1,500,000 mc / M output.
    assert price_usage("claude-sonnet-4", Usage(1_000_000, 0)) == 300_000
    assert price_usage("claude-sonnet-4", Usage(1_000, 1_000)) == 300 + 1_500
    assert price_usage("claude-sonnet-4", Usage()) == 0


def test_each_charge_rounds_up_once_to_the_whole_millicredit() -> None:
    # One Haiku input token costs 0.1 mc: rounds up to 1.
    assert price_usage("claude-haiku-4", Usage(1, 0)) == 1
    # Ten tokens cost exactly 1 mc: no extra rounding.
    assert price_usage("claude-haiku-4", Usage(10, 0)) == 1
    # Rounded once on the total, not per kind: 5 in (0.5 mc) + 1 out (0.5 mc) = 1 mc, not 2.
    assert price_usage("claude-haiku-4", Usage(5, 1)) == 1
    assert price_usage("claude-haiku-4", Usage(11, 0)) == 2
    # Across kinds too: 1 text token (0.25 mc) + 1 audio token (0.6 mc) = 0.85 mc -> 1, not 2.
    assert price_usage("gpt-4o-transcribe", Usage(2, 0, audio_input_tokens=1)) == 1


def test_cache_reads_and_writes_are_billed_at_their_rates() -> None:
    assert price_usage("claude-sonnet-4", Usage(1_000_000, 0, 1_000_000)) == 30_000  # 10%
    assert price_usage("claude-sonnet-4", Usage(1_000_000, 0, cache_write_tokens=1_000_000)) == 375_000  # 125%
    assert price_usage("gpt-4.1", Usage(1_000_000, 0, 1_000_000)) == 50_000
    assert price_usage("gpt-4.1", Usage(1_000_000, 0, cache_write_tokens=1_000_000)) == 200_000  # = input
    # Opus 4.5: 1,000 uncached (0.5 mc each /1K), 6,000 read (0.05), 3,000 written (0.625), 2,000 out (2.5).
    usage = Usage(input_tokens=10_000, output_tokens=2_000, cached_tokens=6_000, cache_write_tokens=3_000)
    assert price_usage("claude-opus-4-5", usage) == 500 + 300 + 1_875 + 5_000


def test_audio_tokens_are_billed_at_the_audio_rates() -> None:
    # gpt-4o-transcribe: 100 text tokens in ($2.50/M), 900 audio tokens in ($6/M), 200 out ($10/M).
    usage = Usage(input_tokens=1_000, output_tokens=200, audio_input_tokens=900)
    assert price_usage("gpt-4o-transcribe", usage) == 25 + 540 + 200
    # With no audio rates of its own, a model bills audio at its text rates.
    assert price_usage("gpt-4o", Usage(1_000, 1_000, audio_input_tokens=400, audio_output_tokens=300)) == 250 + 1_000


def test_reasoning_tokens_are_billed_as_output() -> None:
    assert price_usage("gpt-5", Usage(0, 1_000, reasoning_tokens=800)) == price_usage("gpt-5", Usage(0, 1_000)) == 1_000


def test_characters_are_billed_per_character() -> None:
    assert price_usage("tts-1", Usage(characters=1_000)) == 1_500
    assert price_usage("tts-1", Usage(characters=1)) == 2  # 1.5 mc rounds up
    assert price_usage("tts-1-hd", Usage(characters=1_000)) == 3_000
    assert price_usage("gpt-4o-mini-tts", Usage(characters=1_000_000)) == 1_200_000  # $12
    # A TTS response that also reports tokens is not billed twice.
    assert price_usage("gpt-4o-mini-tts", Usage(100, 2_000, characters=1_000)) == 1_200


def test_seconds_are_billed_per_second() -> None:
    assert price_usage("whisper-1", Usage(seconds=61)) == 610  # 600 mc a minute, by the second
    assert price_usage("whisper-1", Usage(seconds=1)) == 10
    assert price_usage("gpt-4o-mini-transcribe", Usage(seconds=60)) == 300
    assert price_usage("claude-sonnet-4", Usage(seconds=60)) == 0  # no rate: not billed


def test_embeddings_are_billed_on_input() -> None:
    assert price_usage("text-embedding-3-small", Usage(1_000_000)) == 2_000
    assert price_usage("text-embedding-3-small", Usage(3)) == 1


def test_unit_prices_round_up() -> None:
    assert price_units("tool_call", 3) == 300
    assert price_units("embeddings", 1) == 1  # 2 mc per 1K tokens: 0.002 mc rounds up to 1
    assert price_units("embeddings", 1_000) == 2
    assert price_units("voice_stt", 61) == 610  # 600 mc a minute, billed by the second
    assert price_units("telephony", 60) == 1_500


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [
        (lambda: price_usage("llama-3-70b", Usage(1, 1)), "model_not_supported", "model"),
        (lambda: price_usage("claude-sonnet-4", (1, 1)), "invalid_input", "usage"),  # type: ignore[arg-type]
        (lambda: price_usage("claude-sonnet-4", Usage(-1, 1)), "invalid_input", "input_tokens"),
        (lambda: price_usage("claude-sonnet-4", Usage(1.5, 1)), "invalid_input", "input_tokens"),  # type: ignore[arg-type]
        (lambda: price_usage("claude-sonnet-4", Usage(True, 1)), "invalid_input", "input_tokens"),
        (lambda: price_usage("claude-sonnet-4", Usage(pricing.MAX_TOKENS + 1)), "invalid_input", "input_tokens"),
        (lambda: price_usage("tts-1", Usage(characters=-1)), "invalid_input", "characters"),
        (lambda: price_usage("claude-sonnet-4", Usage(10, 1, 11)), "invalid_input", "cached_tokens"),
        (
            lambda: price_usage("claude-sonnet-4", Usage(10, 1, 6, cache_write_tokens=5)),
            "invalid_input",
            "cache_write_tokens",
        ),
        (
            lambda: price_usage("gpt-4o", Usage(10, 1, 5, audio_input_tokens=6)),
            "invalid_input",
            "audio_input_tokens",
        ),
        (lambda: price_usage("gpt-5", Usage(0, 1, reasoning_tokens=2)), "invalid_input", "reasoning_tokens"),
        (lambda: price_usage("gpt-4o", Usage(0, 1, audio_output_tokens=2)), "invalid_input", "audio_output_tokens"),
        (lambda: price_units("tool_call", 0), "invalid_input", "units"),
        (lambda: price_units("tool_call", -3), "invalid_input", "units"),
        (lambda: price_units("tool_call", 2.0), "invalid_input", "units"),  # type: ignore[arg-type]
        (lambda: price_units("tool_call", "2"), "invalid_input", "units"),  # type: ignore[arg-type]
        (lambda: price_units("teleportation", 1), "unknown_category", "category"),
    ],
)
def test_bad_pricing_input_is_a_catalogue_error_naming_the_field(
    call: Callable[[], int], code: str, field: str
) -> None:
    with pytest.raises(errors.NiyraError) as raised:
        call()
    assert (raised.value.code, raised.value.status) == (code, 400)
    assert field in raised.value.detail


def test_book_is_read_only() -> None:
    with pytest.raises(TypeError):
        MODEL_PRICES["gpt-5"] = MODEL_PRICES["gpt-4o"]  # type: ignore[index]


# --- The file -------------------------------------------------------------------------------------

UNITS = """
[units.tool_call]
unit = "call"
per = 1
millicredits = 100
"""


def _book(tmp_path: Path, models: str, *, head: str = 'version = "v1"\n', units: str = UNITS) -> Path:
    path = tmp_path / "price_book.toml"
    path.write_text(head + units + models)
    return path


def test_a_small_book_loads_with_its_defaults(tmp_path: Path) -> None:
    book = price_book_load(
        _book(
            tmp_path,
            """
[models.claude-x]
provider = "anthropic"
category = "llm"
input = 333
output = 1_000

[models.gpt-x]
provider = "openai"
category = "llm"
input = 200
output = 800
cache_read = 50

[models.say]
provider = "openai"
category = "voice_tts"
per_character = { millicredits = 7, per = 3 }
""",
        )
    )
    claude, gpt, say = book.models["claude-x"], book.models["gpt-x"], book.models["say"]
    assert book.version == "v1"
    assert (claude.cache_read, claude.cache_write, claude.audio_input, claude.audio_output) == (34, 417, 333, 1_000)
    assert (gpt.cache_read, gpt.cache_write) == (50, 200)
    assert (say.input, say.output, say.per_character, say.per_second) == (0, 0, pricing.UnitRate(7, 3), None)
    assert book.units["tool_call"].millicredits == 100


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            '[models.x]\nprovider = "anthropic"\ncategory = "llm"\ninput = 1\nouput = 2\n',
            "models.x: unknown field 'ouput'",
        ),
        ('[models.x]\nprovider = "groq"\ncategory = "llm"\ninput = 1\noutput = 2\n', "models.x.provider"),
        ('[models.x]\nprovider = "openai"\ncategory = "video"\ninput = 1\n', "models.x.category"),
        ('[models.x]\nprovider = "openai"\ncategory = "llm"\ninput = 1.5\noutput = 2\n', "models.x.input"),
        ('[models.x]\nprovider = "openai"\ncategory = "llm"\ninput = -1\noutput = 2\n', "models.x.input"),
        ('[models.x]\nprovider = "openai"\ncategory = "llm"\ninput = true\noutput = 2\n', "models.x.input"),
        ('[models.x]\nprovider = "openai"\ncategory = "llm"\ninput = 1\n', "needs output"),
        ('[models.x]\nprovider = "openai"\ncategory = "voice_tts"\n', "needs per_character"),
        ('[models.x]\nprovider = "openai"\ncategory = "voice_stt"\n', "needs per_second or audio_input"),
        (
            '[models.x]\nprovider = "openai"\ncategory = "voice_stt"\nper_second = { millicredits = 1 }\n',
            "models.x.per_second: needs both",
        ),
        (
            '[models.x]\nprovider = "openai"\ncategory = "voice_stt"\nper_second = { millicredits = 1, per = 0 }\n',
            "models.x.per_second.per",
        ),
        ('[models.x]\nprovider = "openai"\ncategory = "llm"\ninput = 1\noutput = 2\ncache_read = 2\n', "cache_read"),
        ('[models.X]\nprovider = "openai"\ncategory = "llm"\ninput = 1\noutput = 2\n', "models.X: keys are"),
        ("[models]\n", "models: must be a table with at least one entry"),
        ('[models.x]\nprovider = "openai"\ncategory = "llm"\ninput = 1\noutput = 2\n[models.x', "price_book.toml"),
    ],
)
def test_a_bad_book_is_a_clear_error(tmp_path: Path, models: str, message: str) -> None:
    with pytest.raises(PriceBookError, match=re.escape(message)):
        price_book_load(_book(tmp_path, models))


@pytest.mark.parametrize(
    ("head", "units", "message"),
    [
        ("", UNITS, "version must be a non-empty string"),
        ('version = "v1"\nsurcharge = 1\n', UNITS, "unknown field 'surcharge'"),
        ('version = "v1"\n', '[units.tool_call]\nunit = "call"\nper = 1\n', r"units\.tool_call\.millicredits"),
        ('version = "v1"\n', "", "units: must be a table"),
    ],
)
def test_a_bad_book_header_or_unit_is_a_clear_error(tmp_path: Path, head: str, units: str, message: str) -> None:
    models = '[models.x]\nprovider = "openai"\ncategory = "llm"\ninput = 1\noutput = 2\n'
    with pytest.raises(PriceBookError, match=message):
        price_book_load(_book(tmp_path, models, head=head, units=units))


def test_a_missing_book_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PriceBookError, match=r"nothing\.toml"):
        price_book_load(tmp_path / "nothing.toml")
