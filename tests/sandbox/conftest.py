"""Fixtures of the sandbox tests: official SDK clients pointed straight at the sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx2
import openai
import pytest

from sandbox import SandboxServer, anthropic_key, openai_key


@pytest.fixture
def claude(sandbox: SandboxServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        api_key=anthropic_key(), base_url=sandbox.anthropic_base_url, max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture
def gpt(sandbox: SandboxServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=openai_key(), base_url=sandbox.openai_base_url, max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def http(sandbox: SandboxServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=sandbox.url, timeout=5.0) as client:
        yield client
