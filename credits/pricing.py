"""The price book: what every metered thing costs, in one place, loaded once at import.

Units
-----
* Money is integers in **millicredits** (mc): 1 credit = 1,000 mc. No floats anywhere.
* Models are priced in **millicredits per million tokens**, separately for input, cached
  input and output tokens.
* Other categories have a **unit price**: ``millicredits`` for every ``per`` units, where the
  unit is what the reporting subsystem naturally counts (tokens, calls, characters, seconds,
  records). "STT per minute" is therefore 60 seconds' worth, reported in seconds.

Rounding
--------
Each charge is computed exactly as a rational number and rounded **up** once, to the next whole
millicredit (never per token or per component). Any non-zero usage therefore costs at least 1 mc,
and we never undercharge by rounding.

Cached input tokens
-------------------
``input_tokens`` counts *all* prompt tokens, including those served from the provider's prompt
cache; ``cached_tokens`` (≤ ``input_tokens``) is the part read from cache. Cached tokens are billed
at the model's ``cached_input`` rate instead of the ``input`` rate: 10% of the input rate unless
the book says otherwise (OpenAI's gpt-4.1 and gpt-4o families: 25% and 50%). For Anthropic, whose usage
reports cache reads separately, pass ``input_tokens = input_tokens + cache_creation_input_tokens
+ cache_read_input_tokens`` and ``cached_tokens = cache_read_input_tokens`` (cache writes are
billed at the plain input rate).

History
-------
Changing a price here never rewrites history: every ledger entry stores the amount it was
charged and, in ``pricing``, the price book version and the rate used. Bump
``PRICE_BOOK_VERSION`` with every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from core import errors

PRICE_BOOK_VERSION: Final = "2026-12-01"
PER_MILLION: Final = 1_000_000

# Bounds that keep every product below PostgreSQL's bigint, whatever a caller sends.
MAX_TOKENS: Final = 100_000_000
MAX_UNITS: Final = 1_000_000_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Millicredits per million tokens. ``category`` is the ledger category its calls book to."""

    key: str
    category: str
    input: int
    output: int
    cached_input: int

    def as_rate(self) -> dict[str, int | str]:
        return {
            "model": self.key,
            "per_million_input": self.input,
            "per_million_cached_input": self.cached_input,
            "per_million_output": self.output,
        }


@dataclass(frozen=True, slots=True)
class UnitPrice:
    """``millicredits`` for every ``per`` ``unit``s of ``category``."""

    category: str
    unit: str
    per: int
    millicredits: int

    def as_rate(self) -> dict[str, int | str]:
        return {"unit": self.unit, "per": self.per, "millicredits": self.millicredits}


@dataclass(frozen=True, slots=True)
class LlmUsage:
    """Token counts of one call, as the provider reported them (see "Cached input tokens")."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


def _llm(key: str, input: int, output: int, cached_input: int | None = None) -> ModelPrice:
    # Default cache discount: cached input at 10% of the input rate, rounded up.
    cached = cached_input if cached_input is not None else -(-input // 10)
    return ModelPrice(key=key, category="llm", input=input, output=output, cached_input=cached)


def _embedding(key: str, input: int) -> ModelPrice:
    return ModelPrice(key=key, category="embeddings", input=input, output=0, cached_input=input)


# 1 credit is priced at one US cent of provider list price, so $1 per million tokens is
# 100,000 mc per million tokens. Keys are the routing catalog's `price_key`s.
_MODELS: tuple[ModelPrice, ...] = (
    # Anthropic, 4.x generations.
    _llm("claude-opus-4", input=1_500_000, output=7_500_000),
    _llm("claude-sonnet-4", input=300_000, output=1_500_000),
    _llm("claude-haiku-4", input=100_000, output=500_000),
    # Apex (Fable 5), Opus 4 tier. BYOK-only, so never charged in practice; priced so estimates
    # and the usage breakdown have something to show.
    _llm("apex", input=1_500_000, output=7_500_000),
    # OpenAI gpt-4.x.
    _llm("gpt-4.1", input=200_000, output=800_000, cached_input=50_000),
    _llm("gpt-4.1-mini", input=40_000, output=160_000, cached_input=10_000),
    _llm("gpt-4.1-nano", input=10_000, output=40_000, cached_input=2_500),
    _llm("gpt-4o", input=250_000, output=1_000_000, cached_input=125_000),
    _llm("gpt-4o-mini", input=15_000, output=60_000, cached_input=7_500),
    # OpenAI gpt-5.x.
    _llm("gpt-5", input=125_000, output=1_000_000),
    _llm("gpt-5-mini", input=25_000, output=200_000),
    _llm("gpt-5-nano", input=5_000, output=40_000),
    # Embeddings (memory search): input tokens only.
    _embedding("text-embedding-3-small", input=2_000),
    _embedding("text-embedding-3-large", input=13_000),
)

_UNITS: tuple[UnitPrice, ...] = (
    # Same rate as text-embedding-3-small, so either way of charging embeddings agrees.
    UnitPrice("embeddings", unit="token", per=1_000, millicredits=2),
    UnitPrice("tool_call", unit="call", per=1, millicredits=100),
    UnitPrice("voice_tts", unit="character", per=1_000, millicredits=1_500),
    UnitPrice("voice_stt", unit="second", per=60, millicredits=600),
    UnitPrice("enrichment", unit="record", per=1, millicredits=2_000),
    UnitPrice("telephony", unit="second", per=60, millicredits=1_500),
)

MODEL_PRICES: Final = MappingProxyType({price.key: price for price in _MODELS})
UNIT_PRICES: Final = MappingProxyType({price.category: price for price in _UNITS})
# Categories `credit_charge` accepts: everything metered per unit. LLM calls go through holds.
METERED_CATEGORIES: Final = frozenset(UNIT_PRICES)


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer division rounding up (for non-negative numerators)."""
    return -(-numerator // denominator)


def _whole(name: str, value: object, *, maximum: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise errors.NiyraError(errors.INVALID_INPUT, detail={name: [f"A whole number from {minimum} to {maximum:,}."]})
    return value


def model_price(model_key: str) -> ModelPrice:
    """The book's prices for ``model_key``, or a 400 ``model_not_supported``."""
    price = MODEL_PRICES.get(model_key) if isinstance(model_key, str) else None
    if price is None:
        detail = {"model": [f"Not in the price book: {model_key!r}."]}
        raise errors.NiyraError(errors.MODEL_NOT_SUPPORTED, detail=detail)
    return price


def unit_price(category: str) -> UnitPrice:
    """The unit price of a metered category, or a 400 ``unknown_category``."""
    price = UNIT_PRICES.get(category) if isinstance(category, str) else None
    if price is None:
        raise errors.NiyraError(
            errors.UNKNOWN_CATEGORY, detail={"category": [f"One of: {', '.join(sorted(METERED_CATEGORIES))}."]}
        )
    return price


def price_llm_call(model_key: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> int:
    """Cost in millicredits of one model call, rounded up to the whole millicredit.

    ``input_tokens`` includes ``cached_tokens``; see the module docstring.
    """
    price = model_price(model_key)
    input_tokens = _whole("input_tokens", input_tokens, maximum=MAX_TOKENS)
    output_tokens = _whole("output_tokens", output_tokens, maximum=MAX_TOKENS)
    cached_tokens = _whole("cached_tokens", cached_tokens, maximum=input_tokens)
    scaled = (
        (input_tokens - cached_tokens) * price.input + cached_tokens * price.cached_input + output_tokens * price.output
    )
    return ceil_div(scaled, PER_MILLION)


def price_llm_usage(model_key: str, usage: LlmUsage) -> int:
    return price_llm_call(model_key, usage.input_tokens, usage.output_tokens, usage.cached_tokens)


def price_llm_worst_case(model_key: str, input_tokens_estimate: int, max_tokens: int) -> int:
    """What a hold reserves: the whole prompt at the uncached rate plus ``max_tokens`` of output."""
    return price_llm_call(model_key, input_tokens_estimate, max_tokens, 0)


def price_units(category: str, units: int) -> int:
    """Cost in millicredits of ``units`` of a metered category, rounded up."""
    price = unit_price(category)
    units = _whole("units", units, minimum=1, maximum=MAX_UNITS)
    return ceil_div(units * price.millicredits, price.per)
