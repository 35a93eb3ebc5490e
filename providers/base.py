"""What every provider adapter offers, and the result of a key probe."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Final

from django.conf import settings
from django.db import models
from django.views.decorators.debug import sensitive_variables

from core.errors import (
    KEY_CHECK_UNAVAILABLE_MESSAGE,
    KEY_QUOTA_EXHAUSTED,
    KEY_RATE_LIMITED,
    PROVIDER_UNAVAILABLE,
    NiyraError,
)
from providers.errors import map_provider_error

logger = logging.getLogger(__name__)


class Provider(models.TextChoices):
    """The providers Niyra speaks to. First-party only: the product page refuses third-party ones."""

    ANTHROPIC = "anthropic", "Anthropic"
    OPENAI = "openai", "OpenAI"


# The cheapest current model of each provider that answers a one-token request. For OpenAI that
# is gpt-4.1-nano rather than the (cheaper per input token) gpt-5-nano: GPT-5 models spend the
# completion budget on hidden reasoning first, and gpt-5-nano is already marked deprecated. Both
# are priced in fractions of a cent per million tokens; a probe costs nothing meaningful.
# If a provider retires one of these, probes answer 404 and every key save reports "couldn't reach
# the provider" with the 404 logged: change the id here, in this one place.
PROBE_MODELS: Final[Mapping[str, str]] = MappingProxyType(
    {
        Provider.ANTHROPIC: "claude-haiku-4-5",
        Provider.OPENAI: "gpt-4.1-nano",
    }
)
PROBE_PROMPT: Final = "ping"


PROBE_MAX_TOKENS: Final = 1


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """How the provider answered one tiny request made with a key. Never holds the key."""

    provider: str
    model: str
    error: NiyraError | None
    elapsed_ms: int

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def code(self) -> str:
        """The string "ok", or the catalogue code of the error (key_invalid, rate_limited, ...)."""
        return "ok" if self.error is None else self.error.code

    @property
    def key_is_genuine(self) -> bool:
        """A rate-limited or out-of-quota answer still proves the provider knows the key."""
        return self.error is None or self.error.spec in (KEY_RATE_LIMITED, KEY_QUOTA_EXHAUSTED)

    @property
    def rejection(self) -> NiyraError | None:
        """The provider's error when it did not accept the key as genuine; None when it did."""
        return None if self.key_is_genuine else self.error


class ProviderAdapter(ABC):
    """One provider behind its official async SDK.

    A client is built per call with the caller's key (no retries, an explicit timeout) and
    closed afterwards, so no key outlives the call in a shared object. Routed calls don't come
    here: the gateway forwards the providers' own requests (routing.gateway).
    """

    provider: ClassVar[str]

    def __init__(self, *, base_url: str | None = None) -> None:
        self.base_url = base_url if base_url is not None else self.default_base_url()

    @classmethod
    @abstractmethod
    def default_base_url(cls) -> str | None:
        """The configured base URL (None: the SDK's own, i.e. the real provider)."""

    @abstractmethod
    async def _send_probe(self, api_key: str, *, timeout: float) -> None:
        """Send the one-token request; raise whatever the SDK raises."""

    @sensitive_variables("api_key")
    async def probe(self, api_key: str, *, timeout: float | None = None) -> ProbeResult:
        """Validate `api_key` with one real request: max_tokens 1, cheapest model, no retries.

        Never raises for anything the provider (or the network) does: the outcome is in
        `ProbeResult.error`, a catalogue error whose message is ours, never the provider's.
        """
        limit = float(settings.PROVIDER_VALIDATION_TIMEOUT_SECONDS if timeout is None else timeout)
        started = time.monotonic()
        error: NiyraError | None = None
        try:
            # The SDK timeout bounds each phase (connect, read, ...); this bounds the whole call,
            # so a provider trickling bytes cannot hold the request for longer.
            async with asyncio.timeout(limit):
                await self._send_probe(api_key, timeout=limit)
        except Exception as exc:
            error = map_provider_error(exc, provider=self.provider)
            if error.spec is PROVIDER_UNAVAILABLE:
                # A probe never charges: "Nothing was charged" would answer the wrong worry.
                message = KEY_CHECK_UNAVAILABLE_MESSAGE.format(provider=Provider(self.provider).label)
                error = NiyraError(PROVIDER_UNAVAILABLE, detail=error.detail, message=message)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        result = ProbeResult(
            provider=self.provider, model=PROBE_MODELS[self.provider], error=error, elapsed_ms=elapsed_ms
        )
        logger.info("key probe provider=%s outcome=%s elapsed_ms=%d", self.provider, result.code, elapsed_ms)
        return result
