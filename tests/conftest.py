"""Shared fixtures, and the rule for tests that need a real Redis.

Tests marked `@pytest.mark.redis` are skipped, with the reason printed, when no Redis answers on
127.0.0.1; with NIYRA_REQUIRE_SERVICES=1 (CI) they fail instead. PostgreSQL is always there: CI's
system server through DATABASE_URL, or the embedded one (tests/local_postgres.py).
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
    broker = "Redis" if settings.USING_REDIS else "in-memory (Redis-only tests skipped)"
    return [f"niyra: broker={broker}; require services={REQUIRE_SERVICES}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not settings.USING_REDIS and item.get_closest_marker("redis"):
        reason = "needs redis, which is not reachable on 127.0.0.1"
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
