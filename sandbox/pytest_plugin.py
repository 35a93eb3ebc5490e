"""Pytest fixtures for the provider sandbox; load with ``-p sandbox.pytest_plugin``.

* ``sandbox_server`` (session): one started :class:`SandboxServer` per test process.
* ``sandbox`` (function): the same server, with its request log and OAuth state cleared.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .runner import SandboxServer


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    server = SandboxServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    sandbox_server.reset()
    yield sandbox_server
