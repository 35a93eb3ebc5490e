"""Fixtures for the gateway's end-to-end tests: the official SDKs pointed at a live gateway
(nothing changed but `base_url` and `api_key`), the two ways a call is paid, and the books
checked after every test.

The sandbox is deterministic (docs/sandbox.md), so every test knows the exact usage a call
reports and asserts the exact millicredits it moved: `price_usage(price_key, usage)` on the
credits path, nothing (and a zero-amount entry saying what it would have cost) on BYOK.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2
import pytest
from anthropic import Anthropic
from openai import OpenAI

from accounts.services import api_token_create
from byok.models import ProviderKey
from credits.models import BillingAccount, Category, CreditHold, HoldStatus, KeySource, LedgerEntry
from credits.pricing import Usage, price_usage
from credits.selectors import ledger_mismatches
from routing.models import RoutedCall
from sandbox import SandboxServer, anthropic_key, openai_key

Path = Literal["credits", "byok"]
SDK_TIMEOUT = 30

# The sandbox's reply: 12 words, one output token each (sandbox/replies.py).
REPLY_WORDS = 12


@pytest.fixture(autouse=True)
def _books_balance(transactional_db: None) -> Iterator[None]:
    """After every test the ledger agrees with the balances, and no hold is left open: a call
    that failed released its hold, one that succeeded settled it."""
    yield
    assert ledger_mismatches() == []
    open_holds = list(CreditHold.objects.filter(status=HoldStatus.OPEN).values_list("model", "amount"))
    assert open_holds == []


@dataclass
class Niyra:
    """The live gateway and the sandbox behind it, with the official SDKs as clients."""

    url: str
    sandbox: SandboxServer

    def token(self, user: Any) -> str:
        return api_token_create(user=user, name="sdk").plaintext

    def anthropic(self, user: Any | None = None, *, token: str | None = None) -> Anthropic:
        key = token if token is not None else self.token(user)
        return Anthropic(base_url=f"{self.url}/anthropic", api_key=key, max_retries=0, timeout=SDK_TIMEOUT)

    def openai(self, user: Any | None = None, *, token: str | None = None) -> OpenAI:
        """The OpenAI SDK on the native surface (OpenAI models, as OpenAI serves them)."""
        key = token if token is not None else self.token(user)
        return OpenAI(base_url=f"{self.url}/openai/v1", api_key=key, max_retries=0, timeout=SDK_TIMEOUT)

    def universal(self, user: Any | None = None, *, token: str | None = None) -> OpenAI:
        """The OpenAI SDK on the universal surface (every model, in OpenAI's format)."""
        key = token if token is not None else self.token(user)
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=SDK_TIMEOUT)

    def log(self) -> list[dict[str, Any]]:
        """The sandbox's request log, as its HTTP endpoint serves it (oldest first)."""
        response = httpx2.get(f"{self.sandbox.url}/_sandbox/log", timeout=10)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    def provider_requests(self, path_suffix: str) -> list[dict[str, Any]]:
        """The requests the sandbox received on a provider path ending in `path_suffix`."""
        return [r for r in self.log() if r["path"].endswith(path_suffix)]


@pytest.fixture
def niyra(live_asgi: str, sandbox: SandboxServer) -> Niyra:
    return Niyra(url=live_asgi, sandbox=sandbox)


def key_recorded(user: Any, provider: str, status: str, *, timeout: float = 5) -> ProviderKey:
    """The user's key once its status is `status` (or as it is after `timeout`): the gateway
    records what a call said about the key after the client has its answer, a few ms later."""
    deadline = time.monotonic() + timeout
    while (key := ProviderKey.objects.get(user=user, provider=provider)).status != status:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return key


def available(user: Any) -> int:
    return BillingAccount.objects.get(user=user).available


def anthropic_usage(usage: Any) -> Usage:
    """Niyra's usage of what an Anthropic response reported: its `input_tokens` leaves out the
    cache reads and writes, Niyra's counts every prompt token."""
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    return Usage(
        input_tokens=usage.input_tokens + cache_read + cache_write,
        output_tokens=usage.output_tokens,
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def chat_usage(usage: Any) -> Usage:
    """Niyra's usage of what an OpenAI chat completion reported (`prompt_tokens` counts the
    cached ones)."""
    prompt = usage.prompt_tokens_details
    completion = usage.completion_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached_tokens=(prompt.cached_tokens or 0) if prompt else 0,
        reasoning_tokens=(completion.reasoning_tokens or 0) if completion else 0,
        audio_input_tokens=(prompt.audio_tokens or 0) if prompt else 0,
        audio_output_tokens=(completion.audio_tokens or 0) if completion else 0,
    )


def responses_usage(usage: Any) -> Usage:
    """Niyra's usage of what a Responses API response reported."""
    cached = usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0
    reasoning = usage.output_tokens_details.reasoning_tokens if usage.output_tokens_details else 0
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=cached or 0,
        reasoning_tokens=reasoning or 0,
    )


@dataclass
class Payer:
    """A user who pays for calls one way: credits (no key of their own: hold and settle) or
    BYOK (a Pro user with a stored key for each provider: nothing charged, what it would have
    cost recorded)."""

    path: Path
    user: Any
    start: int = field(init=False)

    def __post_init__(self) -> None:
        self.start = available(self.user)

    @property
    def key_source(self) -> str:
        return KeySource.PLATFORM if self.path == "credits" else KeySource.BYOK

    def assert_billed(self, model: str, price_key: str, *usages: Usage) -> None:
        """The calls made so far, one per `usages`, were billed exactly by the path's rule."""
        costs = [price_usage(price_key, usage) for usage in usages]
        account = BillingAccount.objects.get(user=self.user)
        calls = list(RoutedCall.objects.filter(user=self.user).order_by("created_at"))
        entries = list(
            LedgerEntry.objects.filter(account=account)
            .exclude(category__in=(Category.GRANT, Category.PURCHASE, Category.ADJUSTMENT))
            .order_by("id")
        )
        assert account.reserved == 0
        assert [(c.model, c.key_source, c.outcome) for c in calls] == [(model, self.key_source, "ok")] * len(usages)
        assert [(c.tokens_in, c.tokens_out, c.tokens_cached) for c in calls] == [
            (u.input_tokens, u.output_tokens, u.cached_tokens) for u in usages
        ]
        # Entries name who paid for LLM calls only (embeddings and voice always run on credits).
        assert [(e.model, e.price_key) for e in entries] == [(model, price_key)] * len(usages)
        assert all(e.key_source == (self.key_source if e.category == Category.LLM else "") for e in entries)
        if self.path == "credits":
            assert [c.credits_charged for c in calls] == costs
            assert [-e.amount for e in entries] == costs
            assert all(e.hold_id is not None for e in entries)
            assert account.available == self.start - sum(costs)
        else:
            assert [c.credits_charged for c in calls] == [0] * len(usages)
            assert [e.amount for e in entries] == [0] * len(usages)
            assert [e.pricing.get("would_cost") for e in entries] == costs
            assert account.available == self.start

    def assert_nothing_billed(self) -> None:
        account = BillingAccount.objects.get(user=self.user)
        assert account.reserved == 0
        assert account.available == self.start
        assert not LedgerEntry.objects.filter(account=account, category=Category.LLM).exists()


def payer_for(path: Path, make_account: Callable[..., Any], store_key: Callable[..., Any]) -> Payer:
    if path == "credits":
        return Payer("credits", make_account(plan="free"))
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key())
    store_key(user, "openai", openai_key())
    return Payer("byok", user)


@pytest.fixture(params=["credits", "byok"])
def payer(request: pytest.FixtureRequest, make_account: Callable[..., Any], store_key: Callable[..., Any]) -> Payer:
    """Each test using it runs twice: paid in credits, then on the user's own key."""
    return payer_for(request.param, make_account, store_key)


@pytest.fixture
def credits_payer(make_account: Callable[..., Any], store_key: Callable[..., Any]) -> Payer:
    """Embeddings and voice are always paid in credits (a Pro user with keys too: they don't
    change that)."""
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key())
    return Payer("credits", user)
