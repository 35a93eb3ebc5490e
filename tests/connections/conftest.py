"""Connections tests: the sandbox is the LLM providers, as in the byok tests these flows run
beside (users, clients and the fresh cache: tests/conftest.py)."""

from __future__ import annotations

import pytest

from sandbox import SandboxServer


@pytest.fixture(autouse=True)
def _providers_are_the_sandbox(sandbox_providers: SandboxServer) -> SandboxServer:
    return sandbox_providers
