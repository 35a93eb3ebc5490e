"""Fixtures for the credits tests: funded users and API clients with user or service tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import TokenKind
from accounts.services import api_token_create
from credits.models import BillingAccount, LedgerEntry
from credits.services.ledger import credit_grant

CREDIT = 1_000  # millicredits


@pytest.fixture
def fund(db: None) -> Callable[..., LedgerEntry]:
    """Grant `amount` millicredits to a user (a fresh idempotency key each time)."""
    counter = iter(range(1, 1_000_000))

    def fund(user: Any, amount: int = 100 * CREDIT) -> LedgerEntry:
        return credit_grant(user=user, amount=amount, reason="test funds", idempotency_key=f"fund-{next(counter)}")

    return fund


@pytest.fixture
def funded_user(user: Any, fund: Callable[..., LedgerEntry]) -> Any:
    fund(user, 100 * CREDIT)
    return user


@pytest.fixture
def account_of() -> Callable[[Any], BillingAccount]:
    def account_of(user: Any) -> BillingAccount:
        return BillingAccount.objects.get(user=user)

    return account_of


@pytest.fixture
def user_client(user: Any) -> APIClient:
    client = APIClient()
    issued = api_token_create(user=user, name="user token")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    return client


@pytest.fixture
def service_client(make_user: Callable[..., Any]) -> APIClient:
    robot = make_user("metering@niyra.internal", is_staff=True)
    issued = api_token_create(user=robot, name="metering", kind=TokenKind.SERVICE)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    return client


@pytest.fixture
def connections_for() -> Iterator[Callable[[int], None]]:
    """Make room for `n` threads, each with its own database connection, at the same time.

    The project's psycopg pool (DB_POOL_MAX_SIZE, 20 by default) would otherwise cap a
    50-thread test at 20 concurrent sessions, the rest queueing for a connection.
    """
    from django.db import connection

    options = connection.settings_dict["OPTIONS"]
    original = options.get("pool")

    def widen(n: int) -> None:
        if not original:
            return
        connection.close()
        connection.close_pool()  # type: ignore[attr-defined]
        options["pool"] = (original if isinstance(original, dict) else {}) | {"min_size": 0, "max_size": n + 2}

    yield widen
    if original and options.get("pool") is not original:
        connection.close()
        connection.close_pool()  # type: ignore[attr-defined]
        options["pool"] = original
