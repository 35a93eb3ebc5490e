"""Anthropic through the official async SDK (`anthropic.AsyncAnthropic`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from providers.base import PROBE_MAX_TOKENS, PROBE_MODELS, PROBE_PROMPT, Provider, ProviderAdapter, field_of
from providers.types import ChatRequest, ChatResult, StreamEnd, StreamEvent, TextDelta, Usage, UsageUpdate


class AnthropicAdapter(ProviderAdapter):
    provider = Provider.ANTHROPIC

    @classmethod
    def default_base_url(cls) -> str | None:
        return settings.ANTHROPIC_BASE_URL

    @sensitive_variables("api_key")
    def client(
        self, api_key: str, *, timeout: float, max_retries: int, http_client: httpx2.AsyncClient | None = None
    ) -> anthropic.AsyncAnthropic:
        """A client for one call. Without `http_client` it owns its connections: use it as
        `async with`. With the shared pool (routed calls), never close it."""
        return anthropic.AsyncAnthropic(
            api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=max_retries, http_client=http_client
        )

    @sensitive_variables("api_key")
    async def _send_probe(self, api_key: str, *, timeout: float) -> None:
        async with self.client(api_key, timeout=timeout, max_retries=0) as client:
            await client.messages.create(
                model=PROBE_MODELS[self.provider],
                max_tokens=PROBE_MAX_TOKENS,
                messages=[{"role": "user", "content": PROBE_PROMPT}],
            )

    # --- Routed calls -----------------------------------------------------------------------

    @staticmethod
    def _params(request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.vendor_model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.system:
            params["system"] = request.system
        # No `temperature`: the Messages API (SDK 2.x) has no sampling parameters, and passing
        # one raised TypeError, misreported as "provider unavailable". It is ignored here.
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        return params

    @staticmethod
    def _usage(usage: Any) -> Usage:
        """Anthropic reports cache reads and writes apart from `input_tokens`; we count all
        prompt tokens as input and the cache reads as cached (see credits.pricing). `usage` is
        the JSON object or the SDK's model of it."""
        cache_read = field_of(usage, "cache_read_input_tokens") or 0
        cache_write = field_of(usage, "cache_creation_input_tokens") or 0
        return Usage(
            input_tokens=(field_of(usage, "input_tokens") or 0) + cache_read + cache_write,
            output_tokens=field_of(usage, "output_tokens") or 0,
            cached_tokens=cache_read,
        )

    @sensitive_variables("api_key")
    async def _generate(self, api_key: str, request: ChatRequest) -> ChatResult:
        message, request_id = await self._post_json(self.routed_client(api_key), "/v1/messages", self._params(request))
        blocks = message["content"]
        text = "".join(block["text"] for block in blocks if isinstance(block, dict) and block.get("type") == "text")
        return ChatResult(
            text=text,
            stop_reason=_STOP_REASONS.get(message.get("stop_reason") or "", "other"),
            usage=self._usage(message["usage"]),
            provider_request_id=request_id,
        )

    @sensitive_variables("api_key")
    async def _stream(self, api_key: str, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        stream = await self.routed_client(api_key).messages.create(**self._params(request), stream=True)
        usage = Usage()
        stop_reason = "other"
        try:
            async for event in stream:
                kind = event.type
                if kind == "content_block_delta":
                    delta = event.delta
                    if getattr(delta, "type", "") == "text_delta" and delta.text:
                        yield TextDelta(delta.text)
                elif kind == "message_start":
                    usage = self._usage(event.message.usage)
                    yield UsageUpdate(usage)
                elif kind == "message_delta":
                    # message_delta carries the final output count (and, newer, input fields).
                    reported = event.usage
                    usage = Usage(
                        input_tokens=usage.input_tokens,
                        output_tokens=field_of(reported, "output_tokens") or usage.output_tokens,
                        cached_tokens=usage.cached_tokens,
                    )
                    stop_reason = _STOP_REASONS.get(event.delta.stop_reason or "", "other")
                    yield UsageUpdate(usage)
                elif kind == "message_stop":
                    yield StreamEnd(stop_reason)
                    return
        finally:
            await stream.close()
        raise ConnectionError("stream ended before message_stop")


_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
