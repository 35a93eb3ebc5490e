"""The gateway's data path, money side: the hold before the provider and the close after it, on
the async pool with `credits.ledger_sql`'s statements, and the books after a burst of calls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.management import call_command

from byok.models import KeyStatus, ProviderKey
from core.errors import NiyraError
from credits.models import BillingAccount, CreditHold, HoldStatus, KeySource, LedgerEntry
from credits.pricing import Usage, price_usage
from credits.selectors import ledger_mismatches
from routing.catalog import CatalogModel, resolve
from routing.credentials import RoutingSnapshot
from routing.gateway.auth import Caller
from routing.gateway.ledger import CallClose, CallReceipt, call_close, hold_open
from routing.models import RoutedCall
from tests.routing.gateway.test_data_auth import GatewayLoop, _queries, counted_gateway

SONNET = "claude-sonnet-4-6"
WORST = Usage(input_tokens=2_000, output_tokens=1_000)
USED = Usage(input_tokens=1_200, output_tokens=300, cached_tokens=200, cache_write_tokens=100, reasoning_tokens=40)


NO_FACTS = RoutingSnapshot(account=None, keys={}, fallback_to_credits=False)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayLoop]:
    yield from counted_gateway(monkeypatch)


def _caller(user: Any) -> Caller:
    """What hold_open reads of a caller: the user."""
    return Caller(user_id=user.pk, token_id=None, snapshot=NO_FACTS)


def _close(
    user: Any,
    model: CatalogModel,
    call_id: uuid.UUID,
    *,
    hold: CreditHold | None,
    usage: Usage = USED,
    charge: bool = True,
    key_source: str = KeySource.PLATFORM,
    outcome: str = "ok",
) -> CallClose:
    return CallClose(
        call_id=call_id,
        user_id=user.pk,
        model=model,
        surface="anthropic.messages",
        key_source=key_source,
        hold=hold,
        usage=usage,
        charge=charge,
        outcome=outcome,
        stream=True,
        fell_back=False,
        latency_ms=42,
        key_fingerprint=None,
    )


def test_a_hold_reserves_the_priced_worst_case(gateway: GatewayLoop, make_account: Callable[..., Any]) -> None:
    user = make_account(credits_mc=1_000_000)
    model, call_id = resolve(SONNET), uuid.uuid4()

    hold = gateway.call(hold_open, caller=_caller(user), call_id=call_id, model=model, worst=WORST)

    assert isinstance(hold, CreditHold) and hold.pk is not None
    expected = price_usage(model.price_key, WORST)
    assert (hold.amount, hold.status, hold.model, hold.price_key) == (expected, "open", model.id, model.price_key)
    assert hold.idempotency_key == f"routed:{call_id}"
    assert hold.details == {"routed_call": str(call_id), "model": model.id}
    assert BillingAccount.objects.get(user=user).reserved == expected
    assert gateway.checkouts == 1  # one statement, no hop
    gateway.call(call_close, _close(user, model, call_id, hold=hold, usage=Usage(), charge=False))


def test_a_hold_beyond_the_balance_is_refused_with_the_catalogue_error_and_writes_nothing(
    gateway: GatewayLoop, make_account: Callable[..., Any]
) -> None:
    model = resolve(SONNET)
    required = price_usage(model.price_key, WORST)
    user = make_account(credits_mc=required - 1)

    with pytest.raises(NiyraError) as refused:
        gateway.call(hold_open, caller=_caller(user), call_id=uuid.uuid4(), model=model, worst=WORST)

    assert (refused.value.code, refused.value.status) == ("insufficient_credits", 402)
    assert refused.value.detail == {"available": required - 1, "required": required}
    assert not CreditHold.objects.filter(account__user=user).exists()
    assert BillingAccount.objects.get(user=user).reserved == 0


def test_a_user_without_an_account_is_refused_as_having_no_credits(
    gateway: GatewayLoop, make_user: Callable[..., Any]
) -> None:
    with pytest.raises(NiyraError) as refused:
        gateway.call(hold_open, caller=_caller(make_user()), call_id=uuid.uuid4(), model=resolve(SONNET), worst=WORST)
    assert refused.value.code == "insufficient_credits"


def test_close_settles_exactly_the_usage_and_logs_the_call_in_one_round_trip(
    gateway: GatewayLoop, make_account: Callable[..., Any]
) -> None:
    user = make_account(credits_mc=1_000_000)
    model, call_id = resolve(SONNET), uuid.uuid4()
    hold = gateway.call(hold_open, caller=_caller(user), call_id=call_id, model=model, worst=WORST)
    before = gateway.checkouts

    receipt = gateway.call(call_close, _close(user, model, call_id, hold=hold))

    cost = price_usage(model.price_key, USED)
    account = BillingAccount.objects.get(user=user)
    assert receipt == CallReceipt(credits_charged=cost, would_cost=cost, balance_after=account.balance)
    assert (account.balance, account.reserved) == (1_000_000 - cost, 0)
    assert gateway.checkouts - before == 1  # one connection, one pipeline: settle and log together
    assert CreditHold.objects.get(pk=hold.pk).status == HoldStatus.SETTLED
    entry = LedgerEntry.objects.get(hold=hold)
    assert (entry.amount, entry.input_tokens, entry.output_tokens, entry.cached_tokens) == (-cost, 1_200, 300, 200)
    call = RoutedCall.objects.get(pk=call_id)
    assert (call.surface, call.key_source, call.stream, call.outcome, call.latency_ms) == (
        "anthropic.messages",
        KeySource.PLATFORM,
        True,
        "ok",
        42,
    )
    assert (call.tokens_in, call.tokens_out, call.tokens_cached, call.tokens_cache_write, call.tokens_reasoning) == (
        1_200,
        300,
        200,
        100,
        40,
    )
    assert call.usage == USED.as_dict()
    assert (call.credits_charged, call.credits_would_cost) == (cost, cost)


def test_close_voids_a_failed_call(gateway: GatewayLoop, make_account: Callable[..., Any]) -> None:
    user = make_account(credits_mc=1_000_000)
    model, call_id = resolve(SONNET), uuid.uuid4()
    hold = gateway.call(hold_open, caller=_caller(user), call_id=call_id, model=model, worst=WORST)

    receipt = gateway.call(
        call_close, _close(user, model, call_id, hold=hold, usage=Usage(), charge=False, outcome="provider_unavailable")
    )

    assert receipt == CallReceipt(credits_charged=0, would_cost=0, balance_after=None)
    assert CreditHold.objects.get(pk=hold.pk).status == HoldStatus.VOIDED
    account = BillingAccount.objects.get(user=user)
    assert (account.balance, account.reserved) == (1_000_000, 0)
    call = RoutedCall.objects.get(pk=call_id)
    assert (call.outcome, call.credits_charged, call.usage) == ("provider_unavailable", 0, {})


def test_close_of_a_byok_call_records_the_usage_at_zero_cost_and_what_it_would_have_cost(
    gateway: GatewayLoop, make_account: Callable[..., Any]
) -> None:
    user = make_account(plan="pro", credits_mc=5_000)
    model, call_id = resolve(SONNET), uuid.uuid4()

    receipt = gateway.call(call_close, _close(user, model, call_id, hold=None, key_source=KeySource.BYOK))

    would_cost = price_usage(model.price_key, USED)
    assert receipt == CallReceipt(credits_charged=0, would_cost=would_cost, balance_after=5_000)
    entry = LedgerEntry.objects.get(idempotency_key=f"routed:{call_id}")
    assert (entry.amount, entry.key_source, entry.balance_after) == (0, KeySource.BYOK, 5_000)
    assert entry.pricing["would_cost"] == would_cost
    call = RoutedCall.objects.get(pk=call_id)
    assert (call.credits_charged, call.credits_would_cost, call.key_source) == (0, would_cost, KeySource.BYOK)


def test_a_byok_close_stamps_the_keys_last_use_in_the_same_round_trip(
    gateway: GatewayLoop, make_account: Callable[..., Any], store_key: Callable[..., ProviderKey]
) -> None:
    user = make_account(plan="pro")
    key = store_key(user, "anthropic", "sk-ant-api03-some-key-AbCd")
    model = resolve(SONNET)

    first, checkouts = _queries(
        gateway, lambda: gateway.call(call_close, _close(user, model, uuid.uuid4(), hold=None, key_source="byok"))
    )
    stamped = ProviderKey.objects.get(pk=key.pk).last_used_at
    gateway.call(call_close, _close(user, model, uuid.uuid4(), hold=None, key_source="byok"))

    assert checkouts == 1
    assert first.would_cost > 0
    assert stamped is not None
    assert ProviderKey.objects.get(pk=key.pk).last_used_at == stamped  # at most once a minute
    assert ProviderKey.objects.get(pk=key.pk).status == KeyStatus.VALID


def test_a_second_close_of_the_same_call_changes_nothing(
    gateway: GatewayLoop, make_account: Callable[..., Any]
) -> None:
    user = make_account(credits_mc=1_000_000)
    model, call_id = resolve(SONNET), uuid.uuid4()
    hold = gateway.call(hold_open, caller=_caller(user), call_id=call_id, model=model, worst=WORST)
    gateway.call(call_close, _close(user, model, call_id, hold=hold))
    balance = BillingAccount.objects.get(user=user).balance

    gateway.call(call_close, _close(user, model, call_id, hold=hold))

    assert BillingAccount.objects.get(user=user).balance == balance
    assert RoutedCall.objects.filter(pk=call_id).count() == 1
    assert LedgerEntry.objects.filter(hold=hold).count() == 1


def test_the_books_balance_after_a_burst_of_concurrent_calls(
    gateway: GatewayLoop, make_account: Callable[..., Any]
) -> None:
    """200 hold + close pairs at once on a few accounts (settled, voided, BYOK), through the
    pool: every hold resolved, the ledger agrees with every balance."""
    users = [make_account(plan="pro", credits_mc=50_000_000) for _ in range(5)]
    model = resolve(SONNET)

    async def one(index: int) -> CallReceipt:
        user, call_id = users[index % len(users)], uuid.uuid4()
        if index % 10 == 9:
            return await call_close(_close(user, model, call_id, hold=None, key_source=KeySource.BYOK))
        hold = await hold_open(caller=_caller(user), call_id=call_id, model=model, worst=WORST)
        await asyncio.sleep(0)
        charge = index % 10 != 8
        return await call_close(_close(user, model, call_id, hold=hold, charge=charge))

    async def burst() -> list[CallReceipt]:
        return await asyncio.gather(*(one(index) for index in range(200)))

    receipts = gateway.run(burst(), timeout=120)

    cost = price_usage(model.price_key, USED)
    assert sorted({receipt.credits_charged for receipt in receipts}) == [0, cost]
    assert RoutedCall.objects.count() == 200
    assert not CreditHold.objects.filter(status=HoldStatus.OPEN).exists()
    assert ledger_mismatches() == []
    call_command("reconcile_ledger")
