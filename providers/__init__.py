"""Provider adapters: the only code that talks to the Anthropic and OpenAI SDKs.

BYOK uses :meth:`ProviderAdapter.probe` to validate a key with one tiny real request (routed
calls are forwarded by the gateway as the providers' own requests: routing.gateway). Every SDK
exception becomes a catalogue error through :func:`map_provider_error`, and nothing here ever
keeps, logs or returns an API key.
"""

from __future__ import annotations

from providers.anthropic_adapter import AnthropicAdapter
from providers.base import (
    PROBE_MODELS,
    ProbeResult,
    Provider,
    ProviderAdapter,
)
from providers.errors import map_provider_error
from providers.openai_adapter import OpenAIAdapter

_ADAPTERS: dict[str, type[ProviderAdapter]] = {
    AnthropicAdapter.provider: AnthropicAdapter,
    OpenAIAdapter.provider: OpenAIAdapter,
}


def get_adapter(provider: str) -> ProviderAdapter:
    """The adapter for `provider` ("anthropic" or "openai"), configured from settings.

    Raises KeyError for anything else: callers check the provider first (third-party providers
    get the catalogue's own error, not a crash).
    """
    return _ADAPTERS[provider]()


__all__ = [
    "PROBE_MODELS",
    "AnthropicAdapter",
    "OpenAIAdapter",
    "ProbeResult",
    "Provider",
    "ProviderAdapter",
    "get_adapter",
    "map_provider_error",
]
