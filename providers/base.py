"""What every provider adapter offers, and the result of a key probe."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final

import httpx2
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
from providers.http import shared_http_client
from providers.types import ChatRequest, ChatResult, EmbeddingResult, StreamEvent

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


def field_of(obj: Any, name: str) -> Any:
    """A field of a provider's JSON object (a dict) or of the SDK's typed model of it; None if
    absent. Non-streaming calls read raw JSON, streams the SDK's event models."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


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

    A client is built per call with the caller's key (`max_retries` chosen per operation, an
    explicit timeout) and closed afterwards, so no key outlives the call in a shared object.
    Routing adds `generate`, `stream` and `embed` here; each must catch every exception at this
    boundary and raise `map_provider_error(...)` from None, so no SDK frame (whose locals hold
    the key) reaches an exception report.
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

    # --- Routed calls -----------------------------------------------------------------------
    # No SDK retries (max_retries=0), on purpose: a 429 would make the SDK sleep up to a minute
    # on the caller's request, a retried 5xx doubles the latency of a failure, and on BYOK a
    # retry spends the user's own rate limit. Errors come back at once, precisely; clients retry.
    ROUTED_MAX_RETRIES: ClassVar[int] = 0

    @staticmethod
    def routed_timeout() -> float:
        return float(settings.PROVIDER_TIMEOUT_SECONDS)

    @abstractmethod
    def client(
        self, api_key: str, *, timeout: float, max_retries: int, http_client: httpx2.AsyncClient | None = None
    ) -> Any:
        """The provider's official async SDK client, built for one call."""

    @sensitive_variables("api_key")
    def routed_client(self, api_key: str) -> Any:
        """A client for a routed call on the shared connection pool (see `http.py`)."""
        return self.client(
            api_key,
            timeout=self.routed_timeout(),
            max_retries=self.ROUTED_MAX_RETRIES,
            http_client=shared_http_client(),
        )

    @staticmethod
    async def _post_json(client: Any, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """A non-streaming call through the SDK client's own request path (auth headers, base
        URL, timeout, retry policy, typed status errors), answered as the raw HTTP response: a
        routed call reads four fields, so the typed params and response models would be work
        for nothing.
        Returns the JSON object and the provider's request id. A body that is not a JSON object
        raises, and is reported as provider unavailable, like any malformed answer."""
        response = await client.post(path, body=body, cast_to=httpx2.Response)
        payload = json.loads(response.content)
        if not isinstance(payload, dict):
            raise TypeError("the provider answered something other than a JSON object")
        return payload, response.headers.get("request-id") or response.headers.get("x-request-id")

    @abstractmethod
    async def _generate(self, api_key: str, request: ChatRequest) -> ChatResult: ...

    @abstractmethod
    def _stream(self, api_key: str, request: ChatRequest) -> AsyncIterator[StreamEvent]: ...

    async def _embed(self, api_key: str, *, vendor_model: str, inputs: list[str]) -> EmbeddingResult:
        raise NotImplementedError(f"{self.provider} has no embeddings model in the catalog")

    @sensitive_variables("api_key")
    async def generate(self, api_key: str, request: ChatRequest) -> ChatResult:
        """One non-streaming completion. Raises a catalogue `NiyraError` for any failure."""
        try:
            return await self._generate(api_key, request)
        except Exception as exc:
            raise map_provider_error(exc, provider=self.provider) from None

    @sensitive_variables("api_key")
    async def stream(self, api_key: str, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Text deltas as they arrive, usage updates, then `StreamEnd`. A stream that breaks
        raises a catalogue `NiyraError` after whatever it had already yielded."""
        try:
            async for event in self._stream(api_key, request):
                yield event
        except Exception as exc:
            raise map_provider_error(exc, provider=self.provider) from None

    @sensitive_variables("api_key")
    async def embed(self, api_key: str, *, vendor_model: str, inputs: list[str]) -> EmbeddingResult:
        try:
            return await self._embed(api_key, vendor_model=vendor_model, inputs=inputs)
        except Exception as exc:
            raise map_provider_error(exc, provider=self.provider) from None
