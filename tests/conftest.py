"""Shared fixtures, and the rule for tests that need real PostgreSQL or Redis.

Marked tests (`@pytest.mark.postgres`, `@pytest.mark.redis`) are skipped, with the reason
printed, when the server isn't there; with NIYRA_REQUIRE_SERVICES=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

REQUIRE_SERVICES = os.environ.get("NIYRA_REQUIRE_SERVICES") == "1"
DEFAULT_PASSWORD = "correct-horse-battery"


def pytest_report_header(config: pytest.Config) -> list[str]:
    db = "PostgreSQL" if settings.USING_POSTGRES else "SQLite (PostgreSQL-only tests skipped)"
    broker = "Redis" if settings.USING_REDIS else "in-memory (Redis-only tests skipped)"
    return [f"niyra: database={db}; broker={broker}; require services={REQUIRE_SERVICES}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    available = {"postgres": settings.USING_POSTGRES, "redis": settings.USING_REDIS}
    for marker, present in available.items():
        if not present and item.get_closest_marker(marker):
            reason = f"needs {marker}, which is not reachable on 127.0.0.1"
            if REQUIRE_SERVICES:
                pytest.fail(f"NIYRA_REQUIRE_SERVICES=1 but this test {reason}", pytrace=False)
            pytest.skip(reason)


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def make_user(db: None) -> Callable[..., Any]:
    from accounts.services import user_create

    counter = iter(range(1, 10_000))

    def make(email: str | None = None, password: str = DEFAULT_PASSWORD, **extra: Any) -> Any:
        return user_create(email=email or f"user{next(counter)}@example.com", password=password, **extra)

    return make


@pytest.fixture
def user(make_user: Callable[..., Any]) -> Any:
    return make_user("ada@example.com")
