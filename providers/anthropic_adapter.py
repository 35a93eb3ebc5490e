"""Anthropic through the official async SDK (`anthropic.AsyncAnthropic`)."""

from __future__ import annotations

import anthropic
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from providers.base import PROBE_MAX_TOKENS, PROBE_MODELS, PROBE_PROMPT, Provider, ProviderAdapter


class AnthropicAdapter(ProviderAdapter):
    provider = Provider.ANTHROPIC

    @classmethod
    def default_base_url(cls) -> str | None:
        return settings.ANTHROPIC_BASE_URL

    @sensitive_variables("api_key")
    def client(self, api_key: str, *, timeout: float, max_retries: int) -> anthropic.AsyncAnthropic:
        """A client for one call, which owns its connections: use it as `async with`."""
        return anthropic.AsyncAnthropic(
            api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=max_retries
        )

    @sensitive_variables("api_key")
    async def _send_probe(self, api_key: str, *, timeout: float) -> None:
        async with self.client(api_key, timeout=timeout, max_retries=0) as client:
            await client.messages.create(
                model=PROBE_MODELS[self.provider],
                max_tokens=PROBE_MAX_TOKENS,
                messages=[{"role": "user", "content": PROBE_PROMPT}],
            )
