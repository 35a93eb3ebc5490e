"""The price book: what every metered thing costs, read once at import from `price_book.toml`.

Units
-----
* Money is integers in **millicredits** (mc): 1 credit = 1,000 mc = one US cent of list price.
  No floats anywhere.
* Model token rates are **millicredits per million tokens**, one per usage kind (input,
  output, cache read, cache write, audio input, audio output); TTS characters and STT seconds
  have **unit rates**: ``millicredits`` for every ``per`` units.
* Other categories (tool calls, enrichment, ...) have a **unit price** per category.

Usage kinds
-----------
``Usage.input_tokens`` counts *every* prompt token; ``cached_tokens``, ``cache_write_tokens`` and
``audio_input_tokens`` are parts of it, each billed at its own rate, and the rest is billed at
``input``. Likewise ``audio_output_tokens`` is the part of ``output_tokens`` billed at
``audio_output``; ``reasoning_tokens`` is informational (billed as output).

Rounding
--------
A charge is the exact rational sum of every kind times its rate, rounded **up** once to the next
whole millicredit (never per token or per kind): non-zero usage costs at least 1 mc, and
rounding never undercharges.

History
-------
Changing a price never rewrites history: every ledger entry stores the amount it was charged
and, in ``pricing``, the book's version and the rate row used. The file's ``version`` is
bumped with every change.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from core import errors
from providers import Provider

PRICE_BOOK_PATH: Final = Path(__file__).with_name("price_book.toml")
PER_MILLION: Final = 1_000_000

# Bounds that keep every product below PostgreSQL's bigint, whatever a caller or the file says.
MAX_TOKENS: Final = 100_000_000
MAX_UNITS: Final = 1_000_000_000_000
MAX_TOKEN_RATE: Final = 1_000_000_000  # mc per million tokens: $10,000 per million
MAX_UNIT_MILLICREDITS: Final = 10_000_000

MODEL_CATEGORIES: Final = ("llm", "embeddings", "voice_tts", "voice_stt")
_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TOKEN_RATES: Final = ("input", "output", "cache_read", "cache_write", "audio_input", "audio_output")
_UNIT_RATES: Final = ("per_character", "per_second")
# What a row of each category must state; everything else has a default.
_REQUIRED: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {"llm": ("input", "output"), "embeddings": ("input",), "voice_tts": ("per_character",), "voice_stt": ()}
)


class PriceBookError(ValueError):
    """The price book file is wrong; raised at import, so Niyra refuses to start."""


@dataclass(frozen=True, slots=True)
class UnitRate:
    """``millicredits`` for every ``per`` units (exact: no decimals)."""

    millicredits: int
    per: int

    def as_dict(self) -> dict[str, int]:
        return {"millicredits": self.millicredits, "per": self.per}


_FREE = UnitRate(millicredits=0, per=1)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One price key's rates. ``category`` is the ledger category its calls book to."""

    key: str
    provider: str
    category: str
    input: int
    output: int
    cache_read: int
    cache_write: int
    audio_input: int
    audio_output: int
    per_character: UnitRate | None = None
    per_second: UnitRate | None = None

    def as_rate(self) -> dict[str, Any]:
        """The whole row, as a ledger entry records it."""
        rate: dict[str, Any] = {"model": self.key, "category": self.category}
        rate |= {f"per_million_{name}": getattr(self, name) for name in _TOKEN_RATES}
        rate |= {name: unit.as_dict() for name in _UNIT_RATES if (unit := getattr(self, name)) is not None}
        return rate


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
class PriceBook:
    version: str
    models: Mapping[str, ModelPrice]
    units: Mapping[str, UnitPrice]


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call used, as the provider reported it (see "Usage kinds"). Every field is a
    count; the first three keep their positions, so ``Usage(10, 20, 5)`` is input, output,
    cached."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    characters: int = 0
    seconds: int = 0

    def as_dict(self) -> dict[str, int]:
        """The non-zero counts, by field name (what a ledger entry keeps in ``details``)."""
        return {name: value for name in USAGE_FIELDS if (value := getattr(self, name))}


USAGE_FIELDS: Final = tuple(f.name for f in fields(Usage))


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer division rounding up (for non-negative numerators)."""
    return -(-numerator // denominator)


# --- Loading the book -----------------------------------------------------------------------


def _whole_rate(where: str, value: object, maximum: int, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise PriceBookError(f"{where}: must be a whole number from {minimum} to {maximum:,}, not {value!r}")
    return value


def _table(where: str, value: object, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PriceBookError(f"{where}: must be a table")
    if unknown := sorted(set(value) - set(allowed)):
        raise PriceBookError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(allowed)})")
    return value


def _unit_rate(where: str, value: object) -> UnitRate:
    table = _table(where, value, ("millicredits", "per"))
    if set(table) != {"millicredits", "per"}:
        raise PriceBookError(f"{where}: needs both millicredits and per")
    return UnitRate(
        millicredits=_whole_rate(f"{where}.millicredits", table["millicredits"], MAX_UNIT_MILLICREDITS),
        per=_whole_rate(f"{where}.per", table["per"], MAX_UNITS, minimum=1),
    )


def _model_price(where: str, key: str, value: object) -> ModelPrice:
    row = _table(where, value, ("provider", "category", *_TOKEN_RATES, *_UNIT_RATES))
    provider, category = row.get("provider"), row.get("category")
    if provider not in Provider.values:
        raise PriceBookError(f"{where}.provider: one of {', '.join(Provider.values)}, not {provider!r}")
    if category not in MODEL_CATEGORIES:
        raise PriceBookError(f"{where}.category: one of {', '.join(MODEL_CATEGORIES)}, not {category!r}")
    if missing := [name for name in _REQUIRED[category] if name not in row]:
        raise PriceBookError(f"{where}: a {category} price needs {missing[0]}")
    if category == "voice_stt" and "per_second" not in row and "audio_input" not in row:
        raise PriceBookError(f"{where}: a voice_stt price needs per_second or audio_input")
    given = {name: _whole_rate(f"{where}.{name}", row[name], MAX_TOKEN_RATE) for name in _TOKEN_RATES if name in row}
    input_rate, output_rate = given.get("input", 0), given.get("output", 0)
    cache_read = given.get("cache_read", ceil_div(input_rate, 10))
    if cache_read > input_rate:
        raise PriceBookError(f"{where}.cache_read: more than input ({input_rate:,})")
    anthropic_write = ceil_div(input_rate * 5, 4)  # Anthropic's 5-minute cache writes: 1.25x
    units = {name: _unit_rate(f"{where}.{name}", row[name]) for name in _UNIT_RATES if name in row}
    return ModelPrice(
        key=key,
        provider=str(provider),
        category=str(category),
        input=input_rate,
        output=output_rate,
        cache_read=cache_read,
        cache_write=given.get("cache_write", anthropic_write if provider == Provider.ANTHROPIC else input_rate),
        audio_input=given.get("audio_input", input_rate),
        audio_output=given.get("audio_output", output_rate),
        per_character=units.get("per_character"),
        per_second=units.get("per_second"),
    )


def _unit_price(where: str, category: str, value: object) -> UnitPrice:
    row = _table(where, value, ("unit", "per", "millicredits"))
    unit = row.get("unit")
    if not isinstance(unit, str) or not _KEY.fullmatch(unit):
        raise PriceBookError(f"{where}.unit: a unit name such as 'token' or 'second', not {unit!r}")
    return UnitPrice(
        category=category,
        unit=unit,
        per=_whole_rate(f"{where}.per", row.get("per"), MAX_UNITS, minimum=1),
        millicredits=_whole_rate(f"{where}.millicredits", row.get("millicredits"), MAX_UNIT_MILLICREDITS),
    )


def _keyed(where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise PriceBookError(f"{where}: must be a table with at least one entry")
    for key in value:
        if not _KEY.fullmatch(key):
            raise PriceBookError(f"{where}.{key}: keys are lowercase letters, digits, '.', '-', '_' (at most 64)")
    return value


def price_book_load(path: Path) -> PriceBook:
    """Read and check a price book file; any mistake is a `PriceBookError` naming its place."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PriceBookError(f"{path}: {exc}") from exc
    name = path.name
    top = _table(name, data, ("version", "units", "models"))
    version = top.get("version")
    if not isinstance(version, str) or not version.strip():
        raise PriceBookError(f"{name}: version must be a non-empty string (bump it with every change)")
    models = {
        key: _model_price(f"{name}: models.{key}", key, row)
        for key, row in _keyed(f"{name}: models", top.get("models")).items()
    }
    units = {
        category: _unit_price(f"{name}: units.{category}", category, row)
        for category, row in _keyed(f"{name}: units", top.get("units")).items()
    }
    return PriceBook(version=version, models=MappingProxyType(models), units=MappingProxyType(units))


_BOOK: Final = price_book_load(PRICE_BOOK_PATH)

PRICE_BOOK_VERSION: Final = _BOOK.version
MODEL_PRICES: Final = _BOOK.models
UNIT_PRICES: Final = _BOOK.units
# Categories `credit_charge` accepts: everything metered per unit. Model calls go through holds.
METERED_CATEGORIES: Final = frozenset(UNIT_PRICES)


# --- Prices -----------------------------------------------------------------------------------


def _whole(name: str, value: object, *, maximum: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise errors.NiyraError(errors.INVALID_INPUT, detail={name: [f"A whole number from {minimum} to {maximum:,}."]})
    return value


def usage_check(usage: object) -> Usage:
    """``usage`` if it is a `Usage` of whole counts whose parts fit in their totals; else a 400
    ``invalid_input`` naming the field."""
    if not isinstance(usage, Usage):
        raise errors.NiyraError(errors.INVALID_INPUT, detail={"usage": ["A credits.pricing.Usage."]})
    for name in USAGE_FIELDS:
        _whole(name, getattr(usage, name), maximum=MAX_TOKENS)
    parts = 0
    for name in ("cached_tokens", "cache_write_tokens", "audio_input_tokens"):
        parts += getattr(usage, name)
        if parts > usage.input_tokens:
            reason = (
                f"Part of input_tokens ({usage.input_tokens:,}): the cached, cache-write and audio parts exceed it."
            )
            raise errors.NiyraError(errors.INVALID_INPUT, detail={name: [reason]})
    for name in ("reasoning_tokens", "audio_output_tokens"):
        if getattr(usage, name) > usage.output_tokens:
            reason = f"Part of output_tokens ({usage.output_tokens:,}): at most that many."
            raise errors.NiyraError(errors.INVALID_INPUT, detail={name: [reason]})
    return usage


def model_price(price_key: str) -> ModelPrice:
    """The book's prices for ``price_key``, or a 400 ``model_not_supported``."""
    price = MODEL_PRICES.get(price_key) if isinstance(price_key, str) else None
    if price is None:
        detail = {"model": [f"Not in the price book: {price_key!r}."]}
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


def price_usage(price_key: str, usage: Usage) -> int:
    """Cost in millicredits of ``usage`` at ``price_key``'s rates, rounded up once.

    The sum is kept exact over one common denominator (a million tokens times both unit
    rates' ``per``), so integer arithmetic gives the rational total.
    """
    price = model_price(price_key)
    used = usage_check(usage)
    uncached = used.input_tokens - used.cached_tokens - used.cache_write_tokens - used.audio_input_tokens
    text_output = used.output_tokens - used.audio_output_tokens
    per_million = (
        uncached * price.input
        + used.cached_tokens * price.cache_read
        + used.cache_write_tokens * price.cache_write
        + used.audio_input_tokens * price.audio_input
        + text_output * price.output
        + used.audio_output_tokens * price.audio_output
    )
    character, second = price.per_character or _FREE, price.per_second or _FREE
    numerator = (
        per_million * character.per * second.per
        + used.characters * character.millicredits * PER_MILLION * second.per
        + used.seconds * second.millicredits * PER_MILLION * character.per
    )
    return ceil_div(numerator, PER_MILLION * character.per * second.per)


def price_units(category: str, units: int) -> int:
    """Cost in millicredits of ``units`` of a metered category, rounded up."""
    price = unit_price(category)
    units = _whole("units", units, minimum=1, maximum=MAX_UNITS)
    return ceil_div(units * price.millicredits, price.per)
