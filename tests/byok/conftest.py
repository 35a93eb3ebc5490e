"""BYOK tests: the sandbox is both providers, and throttles start fresh (users on each plan and
clients signed in as them: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache

from sandbox import SandboxServer


@pytest.fixture(autouse=True)
def _providers_are_the_sandbox(sandbox_providers: SandboxServer) -> SandboxServer:
    return sandbox_providers


@pytest.fixture(autouse=True)
def _fresh_throttles() -> Iterator[None]:
    cache.clear()  # throttle history lives in the cache
    yield
    cache.clear()
