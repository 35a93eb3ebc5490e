"""Shared fixtures, and the rule for tests that need a real Redis.

Tests marked `@pytest.mark.redis` are skipped, with the reason printed, when no Redis answers on
127.0.0.1; with NIYRA_REQUIRE_SERVICES=1 (CI) they fail instead. PostgreSQL is always there: CI's
system server through DATABASE_URL, or the embedded one (tests/local_postgres.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
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


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Every test starts with an empty shared cache: the per-user key-check budgets live there,
    keyed by user ids that a new test database hands out again (a CI run after another must not
    find the last run's counts)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _logging_as_configured() -> Iterator[None]:
    """Every test starts with the root logger at settings.LOGGING's level, and leaves its handlers
    as it found them: an in-process Celery worker (celery.contrib.testing) sets the root's level
    to its own (ERROR), which would hide the INFO lines later tests read (the request and task
    lines, Sentry's breadcrumbs)."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    root.setLevel(settings.LOGGING["root"]["level"])
    yield
    root.setLevel(settings.LOGGING["root"]["level"])
    root.handlers[:] = handlers


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


@pytest.fixture
def make_plan_user(make_user: Callable[..., Any]) -> Callable[..., Any]:
    """Users with a billing account on the given plan (default Pro)."""

    def make(plan: str = "pro", email: str | None = None) -> Any:
        from credits.models import BillingAccount
        from credits.services.accounts import billing_account_ensure

        user = make_user(email)
        billing_account_ensure(user=user)
        BillingAccount.objects.filter(user=user).update(plan=plan)
        return user

    return make


@pytest.fixture
def pro_user(make_plan_user: Callable[..., Any]) -> Any:
    return make_plan_user("pro", "pro@example.com")


@pytest.fixture
def client_for() -> Callable[[Any], APIClient]:
    """API clients signed in as a user (session authentication)."""

    def make(user: Any) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def pro_client(pro_user: Any, client_for: Callable[[Any], APIClient]) -> APIClient:
    return client_for(pro_user)


@pytest.fixture
def sandbox_providers(settings: Any, sandbox: Any) -> Any:
    """Provider calls go to the loopback sandbox, through the real SDKs."""
    settings.ANTHROPIC_BASE_URL = sandbox.anthropic_base_url
    settings.OPENAI_BASE_URL = sandbox.openai_base_url
    return sandbox
