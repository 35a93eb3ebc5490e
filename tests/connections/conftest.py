"""Connections fixtures: users on a plan (a connection works on any), API clients signed in as
them, and the sandbox as the LLM providers, as in the byok tests these flows run beside."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from credits.models import BillingAccount
from credits.services.accounts import billing_account_ensure
from sandbox import SandboxServer


@pytest.fixture(autouse=True)
def _providers_are_the_sandbox(settings: Any, sandbox: SandboxServer) -> SandboxServer:
    """Any provider call in these tests goes to the loopback sandbox, through the real SDKs."""
    settings.ANTHROPIC_BASE_URL = sandbox.anthropic_base_url
    settings.OPENAI_BASE_URL = sandbox.openai_base_url
    return sandbox


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def make_plan_user(make_user: Callable[..., Any]) -> Callable[..., Any]:
    def make(plan: str = "pro", email: str | None = None) -> Any:
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
    def make(user: Any) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def pro_client(pro_user: Any, client_for: Callable[[Any], APIClient]) -> APIClient:
    return client_for(pro_user)
