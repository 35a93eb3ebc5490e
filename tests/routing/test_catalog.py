"""The model catalog: ids, aliases, dated ids and provider prefixes resolve; retired and
third-party ids get their own errors; the file is checked when it is read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core import errors
from credits.pricing import MODEL_PRICES
from providers import Provider
from routing import catalog
from routing.catalog import MODELS, CatalogError, Kind, catalog_load, lookup, resolve


def _error(model_id: object) -> errors.NiyraError:
    with pytest.raises(errors.NiyraError) as raised:
        resolve(model_id)
    assert lookup(model_id) is None
    return raised.value


@pytest.mark.parametrize(
    ("sent", "model_id"),
    [
        ("claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4", "claude-sonnet-4-0"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("claude-opus-4", "claude-opus-4-0"),
        ("claude-opus-4-20250514", "claude-opus-4-0"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-8", "claude-opus-4-8"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5.1", "gpt-5.1"),
        ("gpt-5.2", "gpt-5.2"),
        ("text-embedding-3-large", "text-embedding-3-large"),
        ("whisper-1", "whisper-1"),
        ("  Claude-Sonnet-4-6 ", "claude-sonnet-4-6"),  # case and spaces don't matter
        ("anthropic/claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("Anthropic/claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("openai/gpt-5.1", "gpt-5.1"),
        ("openai/text-embedding-3-small", "text-embedding-3-small"),
        ("fable-5", "apex"),
        ("FABLE5", "apex"),
        ("anthropic/apex", "apex"),
    ],
)
def test_ids_aliases_dated_ids_and_first_party_prefixes_resolve(sent: str, model_id: str) -> None:
    assert resolve(sent).id == model_id
    assert lookup(sent) is resolve(sent)


def test_apex_is_unchanged() -> None:
    apex = resolve("apex")
    assert (apex.provider, apex.vendor_model, apex.price_key, apex.label) == (
        Provider.ANTHROPIC,
        "claude-fable-5",
        "apex",
        "Apex (Fable 5)",
    )
    assert apex.byok_only and apex.requires_apex
    assert [m.id for m in MODELS if m.byok_only or m.requires_apex] == ["apex"]


@pytest.mark.parametrize(
    ("sent", "replacement"),
    [
        ("claude-3-5-sonnet-20241022", "claude-sonnet-4-6"),
        ("claude-3-5-sonnet-latest", "claude-sonnet-4-6"),
        ("claude-3-7-sonnet-20250219", "claude-sonnet-4-6"),
        ("claude-3-opus-20240229", "claude-opus-4-8"),
        ("claude-3-5-haiku-20241022", "claude-haiku-4-5"),
        ("claude-3-haiku-20240307", "claude-haiku-4-5"),
        ("claude-2.1", "claude-sonnet-4-6"),
        ("gpt-4", "gpt-4.1"),
        ("gpt-4-0613", "gpt-4.1"),
        ("gpt-4-turbo-2024-04-09", "gpt-4.1"),
        ("gpt-3.5-turbo", "gpt-4.1-mini"),
        ("gpt-4.5-preview", "gpt-4.1"),
        ("o1-preview", "gpt-5"),
        ("text-embedding-ada-002", "text-embedding-3-small"),
        ("anthropic/claude-3-5-sonnet-20241022", "claude-sonnet-4-6"),
    ],
)
def test_retired_ids_name_their_replacement(sent: str, replacement: str) -> None:
    error = _error(sent)
    assert (error.code, error.status) == ("model_retired", 400)
    assert error.message == f"{sent} was retired by its provider. Use {replacement} instead."
    assert error.detail == {"model": sent, "replacement": replacement}
    assert resolve(replacement).id == replacement


def test_the_retired_message_reads_as_the_catalogue_says() -> None:
    error = _error("claude-3-5-sonnet-20241022")
    assert error.message == ("claude-3-5-sonnet-20241022 was retired by its provider. Use claude-sonnet-4-6 instead.")
    assert errors.CATALOGUE["model_retired"] is errors.MODEL_RETIRED


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        ("together/llama-3-70b", "third_party_provider"),
        ("groq/mixtral", "third_party_provider"),
        ("meta-llama/Llama-3-8b", "third_party_provider"),
        ("llama-3-70b", "third_party_provider"),
        ("gemini-2.5-pro", "third_party_provider"),
        ("deepseek-chat", "third_party_provider"),
        ("openai/claude-sonnet-4-6", "model_not_supported"),  # the other first party's model
        ("anthropic/gpt-4o", "model_not_supported"),
        ("anthropic/gpt-3.5-turbo", "model_not_supported"),
        ("openai/no-such-model", "model_not_supported"),
        ("claude-sonnet-5", "model_not_supported"),
        ("gpt-6", "model_not_supported"),
        ("", "invalid_input"),
        ("   ", "invalid_input"),
        (None, "invalid_input"),
        (42, "invalid_input"),
    ],
)
def test_unknown_ids_get_their_own_errors(sent: object, code: str) -> None:
    error = _error(sent)
    assert (error.code, error.status) == (code, 400)


def test_an_error_repeats_at_most_a_hundred_characters_of_the_id() -> None:
    assert _error("x" * 500).detail == {"model": "x" * 100}


def test_a_model_of_the_other_provider_says_whose_it_is() -> None:
    assert _error("openai/claude-sonnet-4-6").detail == {"model": "openai/claude-sonnet-4-6", "provider": "anthropic"}


def test_every_model_is_priced_by_a_key_of_its_kind() -> None:
    categories = {Kind.CHAT: "llm", Kind.EMBEDDINGS: "embeddings", Kind.VOICE_TTS: "voice_tts"}
    for model in MODELS:
        price = MODEL_PRICES[model.price_key]
        assert price.category == categories.get(model.kind, "voice_stt"), model.id
        assert price.provider == model.provider, model.id


def test_the_catalog_has_what_the_product_page_lists() -> None:
    ids = {model.id for model in MODELS}
    assert {
        "claude-sonnet-4-0",
        "claude-sonnet-4-5",
        "claude-sonnet-4-6",
        "claude-opus-4-0",
        "claude-opus-4-1",
        "claude-opus-4-5",
        "claude-opus-4-6",
        "claude-opus-4-7",
        "claude-opus-4-8",
        "claude-haiku-4-5",
        "apex",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-5.1",
        "gpt-5.2",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "whisper-1",
    } == ids
    ceilings = {m.id: m.max_output_tokens for m in MODELS}
    assert ceilings["claude-opus-4-0"] == ceilings["claude-opus-4-1"] == 32_000
    assert ceilings["claude-sonnet-4-6"] == ceilings["claude-opus-4-8"] == ceilings["claude-haiku-4-5"] == 64_000
    assert ceilings["gpt-4.1-nano"] == 32_768 and ceilings["gpt-4o-mini"] == 16_384 and ceilings["gpt-5.2"] == 128_000
    assert all(m.max_output_tokens == 0 for m in MODELS if m.kind != Kind.CHAT)
    # Prices that differ between versions have their own keys.
    assert resolve("claude-opus-4-1").price_key != resolve("claude-opus-4-5").price_key
    assert resolve("gpt-5.1").price_key == "gpt-5" != resolve("gpt-5.2").price_key


# --- The file -------------------------------------------------------------------------------------

MODEL = """
[[models]]
id = "gpt-4.1"
provider = "openai"
family = "gpt-4"
price_key = "gpt-4.1"
max_output_tokens = 32_768
aliases = ["gpt-4.1-2025-04-14"]
"""


def _load(tmp_path: Path, text: str) -> catalog.Catalog:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return catalog_load(path)


def test_a_small_catalog_loads_with_its_defaults(tmp_path: Path) -> None:
    loaded = _load(tmp_path, MODEL + '[retired]\n"gpt-4" = "gpt-4.1"\n"gpt-3.5*" = "gpt-4.1"\n')
    (model,) = loaded.models
    assert (model.vendor_model, model.kind, model.byok_only, model.requires_apex, model.label) == (
        "gpt-4.1",
        Kind.CHAT,
        False,
        False,
        "gpt-4.1",
    )
    assert loaded.by_name["gpt-4.1-2025-04-14"] is model
    assert loaded.retired_replacement("gpt-3.5-turbo-0125") == "gpt-4.1"
    assert loaded.retired_replacement("gpt-4-0613") is None  # "gpt-4" is exact


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MODEL.replace('"openai"', '"groq"'), "models[0] (gpt-4.1).provider: one of anthropic, openai, not 'groq'"),
        (MODEL.replace('price_key = "gpt-4.1"', 'price_key = "gpt-9"'), "'gpt-9' is not in the price book"),
        (
            MODEL.replace('price_key = "gpt-4.1"', 'price_key = "claude-sonnet-4"'),
            "'claude-sonnet-4' is anthropic's price, not openai's",
        ),
        (MODEL.replace('price_key = "gpt-4.1"', 'price_key = "tts-1"'), "'tts-1' prices voice_tts, not chat calls"),
        (MODEL + MODEL.replace('aliases = ["gpt-4.1-2025-04-14"]', ""), "'gpt-4.1' names both gpt-4.1 and gpt-4.1"),
        (
            MODEL + MODEL.replace('id = "gpt-4.1"', 'id = "gpt-4.1-mini"'),
            "'gpt-4.1-2025-04-14' names both gpt-4.1 and gpt-4.1-mini",
        ),
        (MODEL.replace("family", "famly"), "unknown field 'famly'"),
        (MODEL + 'kind = "video"\n', "kind: one of chat, embeddings"),
        (MODEL.replace("32_768", "0"), "max_output_tokens: above 0 for chat models only"),
        (MODEL.replace("32_768", "-1"), "max_output_tokens: a whole number"),
        (MODEL.replace('id = "gpt-4.1"', 'id = "GPT 4"'), "models[0].id: lowercase letters"),
        (MODEL + 'byok_only = "yes"\n', "byok_only: true or false"),
        (MODEL + '[retired]\n"gpt-4" = "gpt-5"\n', "the replacement 'gpt-5' is not a catalog model id"),
        (MODEL + '[retired]\n"gpt-4*" = "gpt-4.1"\n', "'gpt-4.1' (gpt-4.1) is in the catalog and also retired"),
        (MODEL + "[extra]\n", "unknown table 'extra'"),
        ("", "needs at least one [[models]] entry"),
        (MODEL + "[[models]\n", "catalog.toml"),
    ],
)
def test_a_bad_catalog_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        _load(tmp_path, text)


def test_a_missing_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"nothing\.toml"):
        catalog_load(tmp_path / "nothing.toml")


def test_the_gateway_fills_the_unsupported_parameter_message() -> None:
    spec = errors.CATALOGUE["unsupported_parameter"]
    message = errors.UNSUPPORTED_PARAMETER_MESSAGE.format(
        param="logprobs", model="claude-sonnet-4-6", reason="Anthropic models don't return token log probabilities."
    )
    assert (spec.status, message) == (
        400,
        "logprobs can't be sent to claude-sonnet-4-6 through this endpoint: "
        "Anthropic models don't return token log probabilities.",
    )
