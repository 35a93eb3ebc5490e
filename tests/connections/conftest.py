"""Connections tests: the sandbox is the LLM providers (as in the byok tests these flows run
beside), and the cache starts fresh (users and clients: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache

from sandbox import SandboxServer


@pytest.fixture(autouse=True)
def _providers_are_the_sandbox(sandbox_providers: SandboxServer) -> SandboxServer:
    return sandbox_providers


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()
