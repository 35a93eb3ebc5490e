"""The model catalog: every model Niyra routes, its provider and how it may be used.

Loaded once at import; a plain dict lookup on the hot path. The product page is the spec:
Anthropic Sonnet, Opus and Haiku of the 4.x generations; Apex (Fable 5, Opus 4 tier) is
BYOK-only and alpha-gated; OpenAI gpt-4.x, gpt-5.x and embeddings; voice models wired up.
No third-party providers (Together, Groq, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from providers import Provider


class Kind(StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    VOICE_TTS = "voice_tts"
    VOICE_STT = "voice_stt"


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

    @property
    def label(self) -> str:
        return self.display_name or self.id


def _anthropic(id: str, family: str, price_key: str, display: str) -> CatalogModel:
    return CatalogModel(id, Provider.ANTHROPIC, id, family, price_key, display_name=display)


def _openai(id: str, family: str, price_key: str, display: str, kind: Kind = Kind.CHAT) -> CatalogModel:
    return CatalogModel(id, Provider.OPENAI, id, family, price_key, kind=kind, display_name=display)


MODELS: tuple[CatalogModel, ...] = (
    # Anthropic, 4.x generations (Sonnet 4.5 reached end-of-life on 2026-11-30; not offered).
    _anthropic("claude-sonnet-4-6", "sonnet", "claude-sonnet-4", "Claude Sonnet 4.6"),
    _anthropic("claude-opus-4-8", "opus", "claude-opus-4", "Claude Opus 4.8"),
    _anthropic("claude-opus-4-7", "opus", "claude-opus-4", "Claude Opus 4.7"),
    _anthropic("claude-opus-4-6", "opus", "claude-opus-4", "Claude Opus 4.6"),
    _anthropic("claude-haiku-4-5", "haiku", "claude-haiku-4", "Claude Haiku 4.5"),
    # Apex mode (Fable 5): Opus 4 tier, on the user's own Anthropic key only.
    CatalogModel(
        "apex",
        Provider.ANTHROPIC,
        "claude-fable-5",
        "apex",
        "apex",
        byok_only=True,
        requires_apex=True,
        display_name="Apex (Fable 5)",
    ),
    # OpenAI gpt-4.x and gpt-5.x.
    _openai("gpt-4.1", "gpt-4", "gpt-4.1", "GPT-4.1"),
    _openai("gpt-4.1-mini", "gpt-4", "gpt-4.1-mini", "GPT-4.1 mini"),
    _openai("gpt-4.1-nano", "gpt-4", "gpt-4.1-nano", "GPT-4.1 nano"),
    _openai("gpt-4o", "gpt-4", "gpt-4o", "GPT-4o"),
    _openai("gpt-4o-mini", "gpt-4", "gpt-4o-mini", "GPT-4o mini"),
    _openai("gpt-5", "gpt-5", "gpt-5", "GPT-5"),
    _openai("gpt-5-mini", "gpt-5", "gpt-5-mini", "GPT-5 mini"),
    _openai("gpt-5-nano", "gpt-5", "gpt-5-nano", "GPT-5 nano"),
    # Embeddings (memory search) are always paid in credits.
    _openai("text-embedding-3-small", "embeddings", "text-embedding-3-small", "Embeddings (small)", Kind.EMBEDDINGS),
    _openai("text-embedding-3-large", "embeddings", "text-embedding-3-large", "Embeddings (large)", Kind.EMBEDDINGS),
    # Voice is wired up through the voice subsystem, which meters it as voice_tts / voice_stt.
    _openai("gpt-4o-mini-tts", "voice", "voice_tts", "Text to speech", Kind.VOICE_TTS),
    _openai("gpt-4o-transcribe", "voice", "voice_stt", "Speech to text", Kind.VOICE_STT),
)

BY_ID: dict[str, CatalogModel] = {model.id: model for model in MODELS}
ALIASES: dict[str, str] = {"fable-5": "apex", "fable5": "apex"}

# Prefixes of providers that BYOK does not support yet; requests for them get the page's words.
THIRD_PARTY_PREFIXES = (
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


def lookup(model_id: str) -> CatalogModel | None:
    key = model_id.strip().lower()
    return BY_ID.get(ALIASES.get(key, key))


def is_third_party(model_id: str) -> bool:
    key = model_id.strip().lower()
    return key.startswith(THIRD_PARTY_PREFIXES) or "/" in key
