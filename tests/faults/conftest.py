"""Fixtures for the fault tests: the live ASGI server and funded users of the routing tests, the
providers swapped for the sandbox, and the check that the web process is healthy after a fault
(it answers, a normal paid call is billed exactly, no hold or pooled connection — Django's or
the gateway's — is left open, and the books balance)."""

from __future__ import annotations

import time
from collections.abc import Callable
from io import StringIO
from typing import Any

import httpx2
import pytest
from django.core.management import call_command
from django.db import connection

from accounts.services import api_token_create
from credits.models import BillingAccount, CreditHold, HoldStatus
from credits.pricing import Usage, price_usage
from credits.selectors import ledger_mismatches
from routing.gateway import db as gateway_db
from sandbox import SandboxServer
from tests.routing.conftest import live_asgi, make_account, store_key  # noqa: F401 - fixtures, shared

PROMPT = "Say hello to the whole world"  # 6 words: the sandbox counts 6 input tokens
REPLY_WORDS = 12  # the sandbox's canned reply
SETTLE_WAIT_SECONDS = 10  # a bound for polling, never an assertion about speed

Headers = Callable[[Any], dict[str, str]]


@pytest.fixture
def providers(settings: Any, sandbox: SandboxServer) -> SandboxServer:
    """Both provider SDKs pointed at the sandbox, with the (normal) platform keys of the test
    settings; a test breaks them one setting at a time."""
    settings.ANTHROPIC_BASE_URL = sandbox.anthropic_base_url
    settings.OPENAI_BASE_URL = sandbox.openai_base_url
    return sandbox


@pytest.fixture
def bearer() -> Headers:
    def headers(user: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_token_create(user=user, name='faults').plaintext}"}

    return headers


def pooled_connections_in_use() -> int:
    """Connections checked out of Django's psycopg pool (the test's own returned first) and of
    the gateway's async pools (one per event loop: the live server's)."""
    in_use = 0
    pool = connection.pool  # type: ignore[attr-defined]
    if pool is not None:
        connection.close()
        stats = pool.get_stats()
        in_use += int(stats["pool_size"] - stats["pool_available"])
    for gateway_pool in list(gateway_db._POOLS.values()):
        if not gateway_pool.closed:
            stats = gateway_pool.get_stats()
            in_use += int(stats["pool_size"] - stats["pool_available"])
    return in_use


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll (bounded): the server may still be finishing what a client has already read."""
    deadline = time.monotonic() + SETTLE_WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {SETTLE_WAIT_SECONDS} s: {what}")
        time.sleep(0.05)


def wait_until_quiet() -> None:
    """No hold is left open and every pooled connection is back in the pool."""
    wait_for(lambda: not CreditHold.objects.filter(status=HoldStatus.OPEN).exists(), "no hold is open")
    wait_for(lambda: pooled_connections_in_use() == 0, "every pooled connection is returned")


def assert_books_balance() -> None:
    """Every account: balance == sum of its entries, reserved == its open holds (the selector and
    the management command a deploy runs)."""
    assert [m.problems for m in ledger_mismatches()] == []
    out = StringIO()
    call_command("reconcile_ledger", stdout=out)
    assert "no mismatches" in out.getvalue()


@pytest.fixture
def serves_normally(
    settings: Any,
    providers: SandboxServer,
    live_asgi: str,  # noqa: F811 - the fixture imported above
    make_account: Callable[..., Any],  # noqa: F811
    bearer: Headers,
) -> Callable[[], None]:
    """After a fault: the providers are healthy again, and the same server answers /healthz and
    bills a normal call on each endpoint exactly; nothing is left open; the books balance."""
    normal = {name: getattr(settings, name) for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")}

    def check() -> None:
        settings.ANTHROPIC_BASE_URL = providers.anthropic_base_url
        settings.OPENAI_BASE_URL = providers.openai_base_url
        for name, value in normal.items():
            setattr(settings, name, value)
        bystander = make_account(plan="free")
        before = BillingAccount.objects.get(user=bystander).balance
        with httpx2.Client(base_url=live_asgi, headers=bearer(bystander), timeout=30) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            message = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": PROMPT}]}
            native = http.post("/api/llm/messages", json=message)
            openai_style = http.post("/v1/chat/completions", json=message | {"model": "gpt-4.1-mini"})
        assert (native.status_code, openai_style.status_code) == (200, 200), (native.text, openai_style.text)
        charged = price_usage("claude-haiku-4", Usage(6, REPLY_WORDS)) + price_usage(
            "gpt-4.1-mini", Usage(6, REPLY_WORDS)
        )
        wait_until_quiet()
        assert BillingAccount.objects.get(user=bystander).balance == before - charged
        assert_books_balance()

    return check
