"""OpenAI through the official async SDK (`openai.AsyncOpenAI`)."""

from __future__ import annotations

import openai
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from providers.base import PROBE_MAX_TOKENS, PROBE_MODELS, PROBE_PROMPT, Provider, ProviderAdapter


class OpenAIAdapter(ProviderAdapter):
    provider = Provider.OPENAI

    @classmethod
    def default_base_url(cls) -> str | None:
        return settings.OPENAI_BASE_URL

    @sensitive_variables("api_key")
    def client(self, api_key: str, *, timeout: float, max_retries: int) -> openai.AsyncOpenAI:
        """A client for one call, which owns its connections: use it as `async with`."""
        return openai.AsyncOpenAI(api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=max_retries)

    @sensitive_variables("api_key")
    async def _send_probe(self, api_key: str, *, timeout: float) -> None:
        async with self.client(api_key, timeout=timeout, max_retries=0) as client:
            await client.chat.completions.create(
                model=PROBE_MODELS[self.provider],
                max_completion_tokens=PROBE_MAX_TOKENS,
                messages=[{"role": "user", "content": PROBE_PROMPT}],
            )
