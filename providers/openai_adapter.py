"""OpenAI through the official async SDK (`openai.AsyncOpenAI`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from providers.base import PROBE_MAX_TOKENS, PROBE_MODELS, PROBE_PROMPT, Provider, ProviderAdapter, field_of
from providers.types import (
    ChatRequest,
    ChatResult,
    EmbeddingResult,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
    UsageUpdate,
)


class OpenAIAdapter(ProviderAdapter):
    provider = Provider.OPENAI

    @classmethod
    def default_base_url(cls) -> str | None:
        return settings.OPENAI_BASE_URL

    @sensitive_variables("api_key")
    def client(
        self, api_key: str, *, timeout: float, max_retries: int, http_client: httpx2.AsyncClient | None = None
    ) -> openai.AsyncOpenAI:
        """A client for one call. Without `http_client` it owns its connections: use it as
        `async with`. With the shared pool (routed calls), never close it."""
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=max_retries, http_client=http_client
        )

    @sensitive_variables("api_key")
    async def _send_probe(self, api_key: str, *, timeout: float) -> None:
        async with self.client(api_key, timeout=timeout, max_retries=0) as client:
            await client.chat.completions.create(
                model=PROBE_MODELS[self.provider],
                max_completion_tokens=PROBE_MAX_TOKENS,
                messages=[{"role": "user", "content": PROBE_PROMPT}],
            )

    # --- Routed calls -----------------------------------------------------------------------

    @staticmethod
    def _params(request: ChatRequest) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        params: dict[str, Any] = {
            "model": request.vendor_model,
            "messages": messages,
            "max_completion_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.stop:
            params["stop"] = list(request.stop)
        return params

    @staticmethod
    def _usage(usage: Any) -> Usage:
        """`usage` is the JSON object or the SDK's model of it."""
        if usage is None:
            return Usage()
        details = field_of(usage, "prompt_tokens_details")
        return Usage(
            input_tokens=field_of(usage, "prompt_tokens") or 0,
            output_tokens=field_of(usage, "completion_tokens") or 0,
            cached_tokens=(field_of(details, "cached_tokens") or 0) if details else 0,
        )

    @sensitive_variables("api_key")
    async def _generate(self, api_key: str, request: ChatRequest) -> ChatResult:
        completion, request_id = await self._post_json(
            self.routed_client(api_key), "/chat/completions", self._params(request)
        )
        choice = completion["choices"][0]
        return ChatResult(
            text=(choice.get("message") or {}).get("content") or "",
            stop_reason=_FINISH_REASONS.get(choice.get("finish_reason") or "", "other"),
            usage=self._usage(completion.get("usage")),
            provider_request_id=request_id,
        )

    @sensitive_variables("api_key")
    async def _stream(self, api_key: str, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        stream = await self.routed_client(api_key).chat.completions.create(
            **self._params(request), stream=True, stream_options={"include_usage": True}
        )
        stop_reason: str | None = None
        usage_seen = False
        try:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield TextDelta(choice.delta.content)
                    if choice.finish_reason:
                        stop_reason = _FINISH_REASONS.get(choice.finish_reason, "other")
                if chunk.usage is not None:
                    usage_seen = True
                    yield UsageUpdate(self._usage(chunk.usage))
        finally:
            await stream.close()
        if stop_reason is None or not usage_seen:
            raise ConnectionError("stream ended before its final usage chunk")
        yield StreamEnd(stop_reason)

    @sensitive_variables("api_key")
    async def _embed(self, api_key: str, *, vendor_model: str, inputs: list[str]) -> EmbeddingResult:
        response = await self.routed_client(api_key).embeddings.create(model=vendor_model, input=inputs)
        vectors = [list(item.embedding) for item in sorted(response.data, key=lambda item: item.index)]
        return EmbeddingResult(vectors=vectors, input_tokens=response.usage.prompt_tokens)


_FINISH_REASONS = {"stop": "stop", "length": "length", "content_filter": "other", "tool_calls": "other"}
