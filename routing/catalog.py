"""The model catalog: every model Niyra routes, its provider and how it may be used.

The data is `catalog.toml`, read and checked once at import (a mistake in it stops start-up
with a message naming the model); lookups are then plain dict reads. The product page is the
spec: Anthropic Sonnet, Opus and Haiku of the 4.x generations; Apex (Fable 5, Opus 4 tier) is
BYOK-only and alpha-gated; OpenAI gpt-4.x, gpt-5.x, embeddings and voice. No third-party
providers (Together, Groq, ...).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from core import errors
from core.errors import NiyraError
from credits.pricing import MODEL_PRICES, ModelPrice
from providers import Provider

CATALOG_PATH: Final = Path(__file__).with_name("catalog.toml")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_OUTPUT_TOKENS: Final = 10_000_000
SHOWN_ID_LENGTH: Final = 100  # how much of an unknown id an error repeats


class Kind(StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    VOICE_TTS = "voice_tts"
    VOICE_STT = "voice_stt"


# The price category each kind's calls are billed as.
_PRICE_CATEGORY: Final[Mapping[Kind, str]] = MappingProxyType(
    {Kind.CHAT: "llm", Kind.EMBEDDINGS: "embeddings", Kind.VOICE_TTS: "voice_tts", Kind.VOICE_STT: "voice_stt"}
)

# Prefixes of providers that BYOK does not support yet; requests for them get the page's words.
THIRD_PARTY_PREFIXES: Final = (
    "together",
    "groq",
    "mistral",
    "mixtral",
    "llama",
    "meta-llama",
    "gemini",
    "google",
    "deepseek",
    "qwen",
    "cohere",
    "command-r",
    "fireworks",
    "openrouter",
    "perplexity",
    "xai",
    "grok",
)


class CatalogError(ValueError):
    """The catalog file is wrong; raised at import, so Niyra refuses to start."""


@dataclass(frozen=True, slots=True)
class CatalogModel:
    id: str  # what users send
    provider: Provider
    vendor_model: str  # what the provider's API is sent
    family: str
    price_key: str  # key in the credits price book
    kind: Kind = Kind.CHAT
    byok_only: bool = False
    requires_apex: bool = False
    display_name: str = ""
    max_output_tokens: int = 0  # the model's output ceiling; 0 where there is no token output
    aliases: tuple[str, ...] = ()  # other ids that mean this model (dated ids, short names)

    @property
    def label(self) -> str:
        return self.display_name or self.id


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[CatalogModel, ...]
    by_name: Mapping[str, CatalogModel]  # every id and alias, lowercase
    retired: Mapping[str, str]  # pattern ("x" exact, "x*" prefix) -> replacement id

    def retired_replacement(self, name: str) -> str | None:
        """The replacement of a retired id (the longest matching pattern), or None."""
        if (exact := self.retired.get(name)) is not None:
            return exact
        prefixes = [p for p in self.retired if p.endswith("*") and name.startswith(p[:-1])]
        return self.retired[max(prefixes, key=len)] if prefixes else None


# --- Loading the catalog -----------------------------------------------------------------------

_FIELDS: Final = (
    "id",
    "provider",
    "vendor_model",
    "family",
    "price_key",
    "kind",
    "byok_only",
    "requires_apex",
    "display_name",
    "max_output_tokens",
    "aliases",
)


def _name(where: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise CatalogError(f"{where}: lowercase letters, digits, '.', '-', '_' (at most 64), not {value!r}")
    return value


def _text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise CatalogError(f"{where}: a string of 1 to 100 characters, not {value!r}")
    return value


def _flag(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise CatalogError(f"{where}: true or false, not {value!r}")
    return value


def _model(where: str, row: object, prices: Mapping[str, ModelPrice]) -> CatalogModel:
    if not isinstance(row, dict):
        raise CatalogError(f"{where}: must be a table")
    if unknown := sorted(set(row) - set(_FIELDS)):
        raise CatalogError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(_FIELDS)})")
    model_id = _name(f"{where}.id", row.get("id"))
    where = f"{where} ({model_id})"
    if row.get("provider") not in Provider.values:
        raise CatalogError(f"{where}.provider: one of {', '.join(Provider.values)}, not {row.get('provider')!r}")
    provider = Provider(row["provider"])
    kind_value = row.get("kind", Kind.CHAT.value)
    if kind_value not in tuple(Kind):
        raise CatalogError(f"{where}.kind: one of {', '.join(Kind)}, not {kind_value!r}")
    kind = Kind(kind_value)
    price_key = _name(f"{where}.price_key", row.get("price_key"))
    price = prices.get(price_key)
    if price is None:
        raise CatalogError(f"{where}.price_key: {price_key!r} is not in the price book (credits/price_book.toml)")
    if price.category != _PRICE_CATEGORY[kind]:
        raise CatalogError(f"{where}.price_key: {price_key!r} prices {price.category}, not {kind} calls")
    if price.provider != provider:
        raise CatalogError(f"{where}.price_key: {price_key!r} is {price.provider}'s price, not {provider}'s")
    max_output = row.get("max_output_tokens")
    if isinstance(max_output, bool) or not isinstance(max_output, int) or not 0 <= max_output <= MAX_OUTPUT_TOKENS:
        raise CatalogError(f"{where}.max_output_tokens: a whole number from 0 to {MAX_OUTPUT_TOKENS:,}")
    if (kind == Kind.CHAT) != (max_output > 0):
        raise CatalogError(f"{where}.max_output_tokens: above 0 for chat models only")
    aliases = row.get("aliases", [])
    if not isinstance(aliases, list):
        raise CatalogError(f"{where}.aliases: a list of ids")
    return CatalogModel(
        id=model_id,
        provider=provider,
        vendor_model=_text(f"{where}.vendor_model", row.get("vendor_model", model_id)),
        family=_name(f"{where}.family", row.get("family")),
        price_key=price_key,
        kind=kind,
        byok_only=_flag(f"{where}.byok_only", row.get("byok_only", False)),
        requires_apex=_flag(f"{where}.requires_apex", row.get("requires_apex", False)),
        display_name=_text(f"{where}.display_name", row.get("display_name", model_id)),
        max_output_tokens=max_output,
        aliases=tuple(_name(f"{where}.aliases", alias) for alias in aliases),
    )


def catalog_load(path: Path, *, prices: Mapping[str, ModelPrice] = MODEL_PRICES) -> Catalog:
    """Read and check a catalog file against the price book; any mistake is a `CatalogError`
    naming its place."""
    try:
        with path.open("rb") as file:
            data: dict[str, Any] = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    name = path.name
    if unknown := sorted(set(data) - {"models", "retired"}):
        raise CatalogError(f"{name}: unknown table {unknown[0]!r} (tables: models, retired)")
    rows = data.get("models")
    if not isinstance(rows, list) or not rows:
        raise CatalogError(f"{name}: needs at least one [[models]] entry")
    models = tuple(_model(f"{name}: models[{index}]", row, prices) for index, row in enumerate(rows))
    by_name: dict[str, CatalogModel] = {}
    for model in models:
        for alias in (model.id, *model.aliases):
            if (other := by_name.get(alias)) is not None:
                raise CatalogError(f"{name}: {alias!r} names both {other.id} and {model.id}")
            by_name[alias] = model
    retired = data.get("retired", {})
    if not isinstance(retired, dict):
        raise CatalogError(f"{name}: retired must be a table of id = replacement")
    catalog = Catalog(models=models, by_name=MappingProxyType(by_name), retired=MappingProxyType(retired))
    for pattern, replacement in retired.items():
        where = f"{name}: retired.{pattern}"
        _name(where, pattern.removesuffix("*"))
        if replacement not in {model.id for model in models}:
            raise CatalogError(f"{where}: the replacement {replacement!r} is not a catalog model id")
    for alias, model in by_name.items():
        if (replacement := catalog.retired_replacement(alias)) is not None:
            raise CatalogError(f"{name}: {alias!r} ({model.id}) is in the catalog and also retired ({replacement})")
    return catalog


_CATALOG: Final = catalog_load(CATALOG_PATH)
MODELS: Final = _CATALOG.models


# --- Resolving a model id ----------------------------------------------------------------------


def _find(model_id: object) -> CatalogModel | NiyraError:
    """The model ``model_id`` names, or the error that says why none is (not raised: `lookup`
    only wants to know)."""
    if not isinstance(model_id, str) or not model_id.strip():
        return NiyraError(errors.INVALID_INPUT, detail={"model": ["Name a model."]})
    shown = model_id.strip()[:SHOWN_ID_LENGTH]
    name = model_id.strip().lower()
    if (model := _CATALOG.by_name.get(name)) is not None:
        return model
    prefix, slash, bare = name.partition("/")
    if slash and prefix not in Provider.values:
        return NiyraError(errors.THIRD_PARTY_PROVIDER, detail={"model": shown})
    if slash:
        model = _CATALOG.by_name.get(bare)
        if model is not None and model.provider == prefix:
            return model
        if model is not None:  # the other first-party provider's model, under this one's name
            return NiyraError(errors.MODEL_NOT_SUPPORTED, detail={"model": shown, "provider": model.provider.value})
        name = bare
    replacement = _CATALOG.retired_replacement(name)
    if replacement is not None and (not slash or _CATALOG.by_name[replacement].provider == prefix):
        message = errors.MODEL_RETIRED_MESSAGE.format(model=shown, replacement=replacement)
        return NiyraError(errors.MODEL_RETIRED, message=message, detail={"model": shown, "replacement": replacement})
    if not slash and name.startswith(THIRD_PARTY_PREFIXES):
        return NiyraError(errors.THIRD_PARTY_PROVIDER, detail={"model": shown})
    return NiyraError(errors.MODEL_NOT_SUPPORTED, detail={"model": shown})


def resolve(model_id: object) -> CatalogModel:
    """The catalog model for an id, alias, dated id or ``anthropic/…`` / ``openai/…`` id.

    Raises `NiyraError`: ``invalid_input`` (no model named), ``model_retired`` (the message
    names the replacement), ``third_party_provider`` (another provider's prefix, or a
    third-party model family), ``model_not_supported`` (anything else, including a model of
    the other first-party provider under this one's prefix).
    """
    found = _find(model_id)
    if isinstance(found, NiyraError):
        raise found
    return found


def lookup(model_id: object) -> CatalogModel | None:
    """`resolve` without the error: the model, or None."""
    found = _find(model_id)
    return None if isinstance(found, NiyraError) else found
