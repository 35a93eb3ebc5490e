"""BYOK tests: the sandbox is both providers (users on each plan, clients signed in as them and
the fresh cache that throttles start from: tests/conftest.py)."""

from __future__ import annotations

import pytest

from sandbox import SandboxServer


@pytest.fixture(autouse=True)
def _providers_are_the_sandbox(sandbox_providers: SandboxServer) -> SandboxServer:
    return sandbox_providers
