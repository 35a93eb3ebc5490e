"""The money rules, one by one: charge, grant, adjust, hold/settle/void, expiry, idempotency."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import AuditEvent
from core import errors
from credits.models import BillingAccount, CreditHold, HoldStatus, KeySource, LedgerEntry
from credits.pricing import Usage, model_price, price_usage
from credits.selectors import billing_account_for, credit_balance, ledger_mismatches
from credits.services.accounts import billing_apex_set, billing_plan_set
from credits.services.holds import credit_hold, credit_holds_expire, credit_settle, credit_void
from credits.services.ledger import credit_adjust, credit_charge, credit_grant, credit_usage_record
from tests.credits.conftest import CREDIT

pytestmark = pytest.mark.django_db


def _state(user: Any) -> tuple[int, int, int, int]:
    account = BillingAccount.objects.get(user=user)
    return account.balance, account.reserved, LedgerEntry.objects.count(), CreditHold.objects.count()


def _code(call: Callable[[], object]) -> str:
    with pytest.raises(errors.NiyraError) as raised:
        call()
    return raised.value.code


# --- charge ----------------------------------------------------------------------------------


def test_charge_debits_the_priced_amount_and_records_what_for(funded_user: Any, account_of: Any) -> None:
    entry = credit_charge(
        user=funded_user, category="tool_call", units=3, idempotency_key="t-1", details={"tool": "gmail.send"}
    )
    assert entry.amount == -300
    assert entry.balance_after == 100 * CREDIT - 300 == account_of(funded_user).balance
    assert (entry.category, entry.units, entry.details) == ("tool_call", 3, {"tool": "gmail.send"})
    assert entry.pricing["rate"] == {"unit": "call", "per": 1, "millicredits": 100}
    assert entry.pricing["book"]
    assert entry.description == "Tool calls: 3 calls"


def test_charge_refuses_when_not_enough_credits_and_writes_nothing(user: Any, fund: Any) -> None:
    fund(user, 250)
    before = _state(user)
    with pytest.raises(errors.NiyraError) as raised:
        credit_charge(user=user, category="tool_call", units=3, idempotency_key="t-1")
    assert raised.value.code == "insufficient_credits"
    assert raised.value.status == 402
    assert raised.value.detail == {"available": 250, "required": 300}
    assert _state(user) == before


def test_charge_counts_reserved_credits_as_unavailable(user: Any, fund: Any) -> None:
    fund(user, 1_000)
    credit_hold(user=user, amount=800, idempotency_key="h-1")
    assert _code(lambda: credit_charge(user=user, category="tool_call", units=3, idempotency_key="t-1")) == (
        "insufficient_credits"
    )
    credit_charge(user=user, category="tool_call", units=2, idempotency_key="t-2")
    assert BillingAccount.objects.get(user=user).available == 0


def test_byok_does_not_cover_non_llm_categories(funded_user: Any) -> None:
    billing_plan_set(user=funded_user, plan="pro")
    for category in ("embeddings", "tool_call", "voice_tts", "voice_stt", "enrichment", "telephony"):
        entry = credit_charge(user=funded_user, category=category, units=10, idempotency_key=f"k-{category}")
        assert entry.amount < 0


def test_same_key_same_parameters_returns_the_first_entry(funded_user: Any) -> None:
    first = credit_charge(user=funded_user, category="enrichment", units=1, idempotency_key="e-1", details={"a": 1})
    before = _state(funded_user)
    again = credit_charge(user=funded_user, category="enrichment", units=1, idempotency_key="e-1", details={"a": 1})
    assert again.pk == first.pk
    assert _state(funded_user) == before


@pytest.mark.parametrize(
    "changed", [{"units": 2}, {"category": "telephony"}, {"details": {"a": 2}}], ids=["units", "category", "details"]
)
def test_same_key_different_parameters_is_a_conflict(funded_user: Any, changed: dict[str, Any]) -> None:
    params: dict[str, Any] = {"category": "enrichment", "units": 1, "details": {"a": 1}}
    credit_charge(user=funded_user, idempotency_key="e-1", **params)
    before = _state(funded_user)
    with pytest.raises(errors.NiyraError) as raised:
        credit_charge(user=funded_user, idempotency_key="e-1", **(params | changed))
    assert (raised.value.code, raised.value.status) == ("idempotency_conflict", 409)
    assert _state(funded_user) == before


def test_keys_are_per_account(funded_user: Any, make_user: Any, fund: Any) -> None:
    other = make_user()
    fund(other)
    a = credit_charge(user=funded_user, category="tool_call", units=1, idempotency_key="same")
    b = credit_charge(user=other, category="tool_call", units=1, idempotency_key="same")
    assert a.pk != b.pk


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"units": 0}, "invalid_input"),
        ({"units": -5}, "invalid_input"),
        ({"units": 1.5}, "invalid_input"),
        ({"units": "3"}, "invalid_input"),
        ({"units": True}, "invalid_input"),
        ({"category": "teleportation"}, "unknown_category"),
        ({"category": "grant"}, "unknown_category"),
        ({"category": "llm"}, "unknown_category"),
        ({"idempotency_key": ""}, "invalid_input"),
        ({"idempotency_key": "   "}, "invalid_input"),
        ({"idempotency_key": "k" * 129}, "invalid_input"),
        ({"idempotency_key": None}, "invalid_input"),
        ({"details": ["not", "a", "dict"]}, "invalid_input"),
        ({"details": {"blob": "x" * 5_000}}, "invalid_input"),
        ({"details": {"when": timezone.now()}}, "invalid_input"),
    ],
)
def test_bad_charge_input_is_a_400_and_writes_nothing(funded_user: Any, params: dict[str, Any], code: str) -> None:
    before = _state(funded_user)
    call: dict[str, Any] = {"category": "tool_call", "units": 1, "idempotency_key": "k-1"} | params
    with pytest.raises(errors.NiyraError) as raised:
        credit_charge(user=funded_user, **call)
    assert (raised.value.code, raised.value.status) == (code, 400)
    assert _state(funded_user) == before


def test_a_128_character_key_is_fine(funded_user: Any) -> None:
    assert credit_charge(user=funded_user, category="tool_call", units=1, idempotency_key="k" * 128).pk


# --- grant and adjust ----------------------------------------------------------------------------


def test_grant_is_audited_with_actor_and_reason(user: Any, make_user: Any) -> None:
    staff = make_user("support@niyra.ai", is_staff=True)
    entry = credit_grant(user=user, amount=5_000, reason="  Outage credit  ", idempotency_key="g-1", actor=staff)
    assert (entry.amount, entry.category, entry.description) == (5_000, "grant", "Outage credit")
    assert entry.pricing["actor_id"] == staff.pk
    event = AuditEvent.objects.get(event="credits.granted")
    assert (event.actor, event.subject, event.details["reason"]) == (staff, user, "Outage credit")


@pytest.mark.parametrize(
    "params",
    [{"reason": ""}, {"reason": "   "}, {"amount": 0}, {"amount": -5}, {"amount": 1.5}, {"idempotency_key": ""}],
)
def test_bad_grant_is_a_400_and_writes_nothing(user: Any, params: dict[str, Any]) -> None:
    call: dict[str, Any] = {"amount": 1_000, "reason": "because", "idempotency_key": "g-1"} | params
    assert _code(lambda: credit_grant(user=user, **call)) == "invalid_input"
    assert not LedgerEntry.objects.exists()
    assert not AuditEvent.objects.filter(event="credits.granted").exists()


def test_grant_replay_does_not_audit_twice(user: Any) -> None:
    credit_grant(user=user, amount=1_000, reason="r", idempotency_key="g-1")
    credit_grant(user=user, amount=1_000, reason="r", idempotency_key="g-1")
    assert AuditEvent.objects.filter(event="credits.granted").count() == 1
    assert _code(lambda: credit_grant(user=user, amount=2_000, reason="r", idempotency_key="g-1")) == (
        "idempotency_conflict"
    )


def test_adjust_is_a_reversing_entry_and_cannot_go_below_zero(funded_user: Any, account_of: Any) -> None:
    entry = credit_adjust(user=funded_user, amount=-40 * CREDIT, reason="Refund reversed", idempotency_key="a-1")
    assert (entry.amount, entry.category, account_of(funded_user).balance) == (-40 * CREDIT, "adjustment", 60 * CREDIT)
    before = _state(funded_user)
    assert _code(lambda: credit_adjust(user=funded_user, amount=-61 * CREDIT, reason="r", idempotency_key="a-2")) == (
        "insufficient_credits"
    )
    assert _state(funded_user) == before
    assert _code(lambda: credit_adjust(user=funded_user, amount=0, reason="r", idempotency_key="a-3")) == (
        "invalid_input"
    )
    assert _code(lambda: credit_adjust(user=funded_user, amount=5, reason="", idempotency_key="a-4")) == (
        "invalid_input"
    )
    assert AuditEvent.objects.filter(event="credits.adjusted").count() == 1


# --- holds ---------------------------------------------------------------------------------------


def test_model_hold_reserves_the_worst_case(funded_user: Any, account_of: Any) -> None:
    hold = credit_hold(user=funded_user, model="claude-sonnet-4", worst=Usage(1_200, 1_024), idempotency_key="c-1")
    expected = price_usage("claude-sonnet-4", Usage(1_200, 1_024))
    assert (hold.amount, hold.category, hold.status) == (expected, "llm", HoldStatus.OPEN)
    account = account_of(funded_user)
    assert (account.balance, account.reserved) == (100 * CREDIT, expected)
    assert not LedgerEntry.objects.filter(hold=hold).exists()


def test_embedding_hold_books_to_embeddings(funded_user: Any) -> None:
    hold = credit_hold(user=funded_user, model="text-embedding-3-small", worst=Usage(5_000, 0), idempotency_key="e")
    assert hold.category == "embeddings"


def test_hold_refused_before_any_call_when_not_enough_credits(user: Any, fund: Any) -> None:
    fund(user, 1_000)
    before = _state(user)
    with pytest.raises(errors.NiyraError) as raised:
        credit_hold(user=user, amount=1_001, idempotency_key="h-1")
    assert raised.value.code == "insufficient_credits"
    assert raised.value.message.startswith("Not enough credits")
    assert _state(user) == before


def test_user_without_an_account_gets_one_and_is_refused(user: Any) -> None:
    assert _code(lambda: credit_hold(user=user, amount=1, idempotency_key="h-1")) == "insufficient_credits"


def test_a_refused_hold_creates_no_account(user: Any) -> None:
    assert _code(lambda: credit_hold(user=user, amount=1, idempotency_key="h-1")) == "insufficient_credits"
    assert not BillingAccount.objects.filter(user=user).exists()


def test_a_hold_refused_on_a_replayed_key_is_the_first_hold(user: Any, fund: Any) -> None:
    """The statement refuses before it reaches the key (too few credits now): the read after it
    still finds the first hold, so a replay is answered, not refused."""
    fund(user, 1_000)
    first = credit_hold(user=user, amount=800, idempotency_key="h-1")
    assert credit_hold(user=user, amount=800, idempotency_key="h-1").pk == first.pk
    assert _code(lambda: credit_hold(user=user, amount=900, idempotency_key="h-1")) == "idempotency_conflict"
    assert BillingAccount.objects.get(user=user).reserved == 800


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "invalid_input"),  # neither amount nor model
        ({"amount": 10, "model": "gpt-5", "worst": Usage(1, 1)}, "invalid_input"),
        ({"amount": 0}, "invalid_input"),
        ({"amount": -10}, "invalid_input"),
        ({"amount": 10.5}, "invalid_input"),
        ({"amount": 10, "category": "grant"}, "unknown_category"),
        ({"model": "llama-3", "worst": Usage(1, 1)}, "model_not_supported"),
        ({"model": "gpt-5"}, "invalid_input"),  # no worst case
        ({"model": "gpt-5", "worst": Usage(0, 0)}, "invalid_input"),
        ({"model": "gpt-5", "worst": Usage(-1, 5)}, "invalid_input"),
        ({"model": "gpt-5", "worst": Usage(1, 1), "category": "embeddings"}, "invalid_input"),
        ({"amount": 10, "expires_in": timedelta(0)}, "invalid_input"),
        ({"amount": 10, "expires_in": timedelta(days=2)}, "invalid_input"),
        ({"amount": 10, "idempotency_key": "x" * 129}, "invalid_input"),
    ],
)
def test_bad_hold_input_is_a_400_and_writes_nothing(funded_user: Any, params: dict[str, Any], code: str) -> None:
    before = _state(funded_user)
    call: dict[str, Any] = {"idempotency_key": "h-1"} | params
    with pytest.raises(errors.NiyraError) as raised:
        credit_hold(user=funded_user, **call)
    assert (raised.value.code, raised.value.status) == (code, 400)
    assert _state(funded_user) == before


def test_hold_replay_and_conflict(funded_user: Any, account_of: Any) -> None:
    first = credit_hold(user=funded_user, amount=500, idempotency_key="h-1")
    assert credit_hold(user=funded_user, amount=500, idempotency_key="h-1").pk == first.pk
    assert account_of(funded_user).reserved == 500
    assert _code(lambda: credit_hold(user=funded_user, amount=501, idempotency_key="h-1")) == "idempotency_conflict"


def test_settle_posts_actual_usage_and_releases_the_rest(funded_user: Any, account_of: Any) -> None:
    hold = credit_hold(
        user=funded_user,
        model="claude-sonnet-4",
        worst=Usage(2_000, 1_000),
        idempotency_key="c-1",
        details={"routed_call_id": "rc_1"},
    )
    usage = Usage(input_tokens=1_800, output_tokens=400, cached_tokens=1_000)
    entry = credit_settle(hold_id=hold.pk, usage=usage, idempotency_key="c-1", details={"request_id": "req_9"})
    cost = price_usage("claude-sonnet-4", Usage(1_800, 400, 1_000))
    assert entry.amount == -cost
    assert (entry.input_tokens, entry.output_tokens, entry.cached_tokens) == (1_800, 400, 1_000)
    assert (entry.model, entry.key_source, entry.category, entry.flagged) == (
        "claude-sonnet-4",
        "platform",
        "llm",
        False,
    )
    assert entry.details == {"routed_call_id": "rc_1", "request_id": "req_9", "usage": usage.as_dict()}
    assert entry.pricing["rate"] == model_price("claude-sonnet-4").as_rate()
    assert entry.hold_id == hold.pk
    account = account_of(funded_user)
    assert (account.balance, account.reserved) == (100 * CREDIT - cost, 0)
    hold.refresh_from_db()
    assert (hold.status, hold.requested_amount, hold.overrun) == (HoldStatus.SETTLED, cost, False)
    assert ledger_mismatches() == []


def test_settle_zero_still_posts_one_entry(funded_user: Any, account_of: Any) -> None:
    hold = credit_hold(user=funded_user, amount=700, idempotency_key="h-1")
    entry = credit_settle(hold_id=hold.pk, actual_amount=0)
    assert entry.amount == 0
    assert account_of(funded_user).balance == 100 * CREDIT
    assert account_of(funded_user).reserved == 0


def test_settle_above_the_hold_charges_what_is_available_and_flags(user: Any, fund: Any, account_of: Any) -> None:
    fund(user, 1_000)
    hold = credit_hold(user=user, amount=600, idempotency_key="h-1")
    credit_hold(user=user, amount=300, idempotency_key="h-2")  # stays open
    entry = credit_settle(hold_id=hold.pk, actual_amount=900)
    # Available for this settlement: its own 600 plus the free 100; the other hold is untouched.
    assert entry.amount == -700
    assert entry.flagged
    assert entry.pricing["uncollected"] == 200
    account = account_of(user)
    assert (account.balance, account.reserved, account.available) == (300, 300, 0)
    hold.refresh_from_db()
    assert hold.overrun and hold.requested_amount == 900
    assert ledger_mismatches() == []


def test_settle_above_the_hold_but_affordable_is_charged_in_full(funded_user: Any) -> None:
    hold = credit_hold(user=funded_user, amount=600, idempotency_key="h-1")
    entry = credit_settle(hold_id=hold.pk, actual_amount=900)
    assert (entry.amount, entry.flagged) == (-900, False)
    hold.refresh_from_db()
    assert hold.overrun


def test_a_hold_resolves_exactly_once(funded_user: Any) -> None:
    settled = credit_hold(user=funded_user, amount=500, idempotency_key="h-1")
    entry = credit_settle(hold_id=settled.pk, actual_amount=100, idempotency_key="s-1")
    before = _state(funded_user)
    # A replay (same key, same amount) returns the first entry...
    assert credit_settle(hold_id=settled.pk, actual_amount=100, idempotency_key="s-1").pk == entry.pk
    # ...anything else is refused.
    for call in (
        lambda: credit_settle(hold_id=settled.pk, actual_amount=100),
        lambda: credit_settle(hold_id=settled.pk, actual_amount=100, idempotency_key="s-2"),
        lambda: credit_settle(hold_id=settled.pk, actual_amount=101, idempotency_key="s-1"),
        lambda: credit_void(hold_id=settled.pk),
    ):
        assert _code(call) == "hold_already_resolved"
    voided = credit_hold(user=funded_user, amount=500, idempotency_key="h-2")
    credit_void(hold_id=voided.pk)
    assert _code(lambda: credit_settle(hold_id=voided.pk, actual_amount=1, idempotency_key="s-3")) == (
        "hold_already_resolved"
    )
    assert credit_void(hold_id=voided.pk).status == HoldStatus.VOIDED  # voiding again is a no-op
    assert _state(funded_user)[:3] == before[:3]
    assert LedgerEntry.objects.filter(hold__isnull=False).count() == 1


def test_void_releases_everything_and_charges_nothing(funded_user: Any, account_of: Any) -> None:
    hold = credit_hold(user=funded_user, amount=5_000, idempotency_key="h-1")
    entries = LedgerEntry.objects.count()
    voided = credit_void(hold_id=hold.pk)
    assert voided.status == HoldStatus.VOIDED and voided.resolved_at
    account = account_of(funded_user)
    assert (account.balance, account.reserved) == (100 * CREDIT, 0)
    assert LedgerEntry.objects.count() == entries


def test_settle_and_void_of_an_unknown_hold(db: None) -> None:
    assert _code(lambda: credit_settle(hold_id=999_999, actual_amount=1)) == "hold_not_found"
    assert _code(lambda: credit_void(hold_id=999_999)) == "hold_not_found"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"actual_amount": 1, "usage": Usage(1, 1)},
        {"actual_amount": -1},
        {"actual_amount": 1.0},
        {"usage": Usage(10, 1, 11)},
        {"usage": Usage(-1, 1)},
        {"usage": {"input_tokens": 1, "output_tokens": 1}},
        {"actual_amount": 1, "idempotency_key": ""},
    ],
)
def test_bad_settle_input_is_a_400_and_leaves_the_hold_open(funded_user: Any, params: dict[str, Any]) -> None:
    hold = credit_hold(user=funded_user, model="gpt-5", worst=Usage(10, 10), idempotency_key="h")
    before = _state(funded_user)
    assert _code(lambda: credit_settle(hold_id=hold.pk, **params)) == "invalid_input"
    hold.refresh_from_db()
    assert hold.status == HoldStatus.OPEN
    assert _state(funded_user) == before


def test_usage_settle_needs_a_model_hold(funded_user: Any) -> None:
    hold = credit_hold(user=funded_user, amount=100, idempotency_key="h")
    assert _code(lambda: credit_settle(hold_id=hold.pk, usage=Usage(1, 1))) == "invalid_input"


# --- expiry --------------------------------------------------------------------------------------


def test_expired_holds_are_released_by_the_sweep(funded_user: Any, account_of: Any) -> None:
    old = credit_hold(user=funded_user, amount=300, idempotency_key="old", expires_in=timedelta(seconds=1))
    fresh = credit_hold(user=funded_user, amount=200, idempotency_key="fresh")
    assert credit_holds_expire(now=timezone.now() + timedelta(minutes=1)) == 1
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert (old.status, fresh.status) == (HoldStatus.EXPIRED, HoldStatus.OPEN)
    assert account_of(funded_user).reserved == 200
    assert credit_holds_expire(now=timezone.now() + timedelta(minutes=1)) == 0  # idempotent
    assert ledger_mismatches() == []


def test_late_settlement_of_an_expired_hold_charges_once(funded_user: Any, account_of: Any) -> None:
    hold = credit_hold(user=funded_user, amount=300, idempotency_key="h", expires_in=timedelta(seconds=1))
    credit_holds_expire(now=timezone.now() + timedelta(minutes=1))
    entry = credit_settle(hold_id=hold.pk, actual_amount=250, idempotency_key="s")
    assert (entry.amount, entry.pricing["late"], entry.flagged) == (-250, True, False)
    assert account_of(funded_user).reserved == 0
    assert _code(lambda: credit_settle(hold_id=hold.pk, actual_amount=250)) == "hold_already_resolved"
    assert ledger_mismatches() == []


def test_void_of_an_expired_hold_prevents_a_late_settlement(funded_user: Any, account_of: Any) -> None:
    hold = credit_hold(user=funded_user, amount=300, idempotency_key="h", expires_in=timedelta(seconds=1))
    credit_holds_expire(now=timezone.now() + timedelta(minutes=1))
    assert credit_void(hold_id=hold.pk).status == HoldStatus.VOIDED
    assert account_of(funded_user).reserved == 0
    assert _code(lambda: credit_settle(hold_id=hold.pk, actual_amount=1)) == "hold_already_resolved"


def test_expire_holds_task_calls_the_service(funded_user: Any) -> None:
    from credits.tasks import expire_holds

    hold = credit_hold(user=funded_user, amount=300, idempotency_key="h", expires_in=timedelta(seconds=1))
    CreditHold.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_holds.apply().get() == 1


# --- BYOK usage records ----------------------------------------------------------------------


def test_byok_usage_is_recorded_at_zero_cost(funded_user: Any, account_of: Any) -> None:
    entry = credit_usage_record(user=funded_user, model="claude-opus-4", usage=Usage(900, 300), idempotency_key="b-1")
    assert (entry.amount, entry.key_source, entry.category) == (0, KeySource.BYOK, "llm")
    assert (entry.input_tokens, entry.output_tokens, entry.cached_tokens) == (900, 300, 0)
    assert account_of(funded_user).balance == 100 * CREDIT
    assert (
        credit_usage_record(user=funded_user, model="claude-opus-4", usage=Usage(900, 300), idempotency_key="b-1").pk
        == entry.pk
    )
    assert (
        _code(
            lambda: credit_usage_record(
                user=funded_user, model="text-embedding-3-small", usage=Usage(9, 0), idempotency_key="b-2"
            )
        )
        == "invalid_input"
    )


def test_byok_usage_keeps_every_kind_and_what_it_would_have_cost(funded_user: Any) -> None:
    usage = Usage(10_000, 2_000, cached_tokens=6_000, cache_write_tokens=3_000, reasoning_tokens=500)
    entry = credit_usage_record(
        user=funded_user, model="claude-opus-4-6", price_key="claude-opus-4-5", usage=usage, idempotency_key="b"
    )
    assert entry.amount == 0
    assert entry.details["usage"] == usage.as_dict()
    assert entry.pricing["would_cost"] == price_usage("claude-opus-4-5", usage) == 7_675
    assert entry.pricing["rate"] == model_price("claude-opus-4-5").as_rate()
    # The same call with more cache writes is other parameters, not a replay.
    other = Usage(10_000, 2_000, cached_tokens=5_000, cache_write_tokens=4_000)
    kwargs = {"user": funded_user, "model": "claude-opus-4-6", "price_key": "claude-opus-4-5", "idempotency_key": "b"}
    assert _code(lambda: credit_usage_record(usage=other, **kwargs)) == "idempotency_conflict"


@pytest.mark.parametrize(
    ("model", "worst", "usage", "category", "units"),
    [
        ("tts-1", Usage(characters=4_000), Usage(characters=1_000), "voice_tts", 1_000),
        ("whisper-1", Usage(seconds=600), Usage(seconds=61), "voice_stt", 61),
        (
            "gpt-4o-transcribe",
            Usage(5_000, 2_000, audio_input_tokens=5_000),
            Usage(1_000, 200, audio_input_tokens=900),
            "voice_stt",
            None,
        ),
    ],
)
def test_voice_holds_and_settles_in_their_own_units(
    funded_user: Any, model: str, worst: Usage, usage: Usage, category: str, units: int | None
) -> None:
    hold = credit_hold(user=funded_user, model=model, worst=worst, idempotency_key="v")
    assert (hold.category, hold.amount) == (category, price_usage(model, worst))
    entry = credit_settle(hold_id=hold.pk, usage=usage, idempotency_key="v")
    assert (entry.amount, entry.category, entry.units) == (-price_usage(model, usage), category, units)
    assert entry.details["usage"] == usage.as_dict()


def test_the_first_byok_call_creates_the_account(user: Any) -> None:
    entry = credit_usage_record(user=user, model="claude-opus-4", usage=Usage(9, 3), idempotency_key="b")
    account = BillingAccount.objects.get(user=user)
    assert (entry.account_id, entry.balance_after, entry.amount) == (account.pk, 0, 0)
    assert (account.plan, account.balance, account.reserved) == ("free", 0, 0)


def test_a_charge_replayed_when_the_credits_are_gone_is_the_first_entry(user: Any, fund: Any) -> None:
    fund(user, 300)
    first = credit_charge(user=user, category="tool_call", units=3, idempotency_key="t-1")
    assert BillingAccount.objects.get(user=user).available == 0
    assert credit_charge(user=user, category="tool_call", units=3, idempotency_key="t-1").pk == first.pk
    assert _code(lambda: credit_charge(user=user, category="tool_call", units=2, idempotency_key="t-1")) == (
        "idempotency_conflict"
    )


def test_a_grant_in_the_callers_transaction_is_undone_with_it(user: Any) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        credit_grant(user=user, amount=1_000, reason="r", idempotency_key="g-1")
        raise RuntimeError("the caller fails after the grant")
    assert not LedgerEntry.objects.exists()
    assert not AuditEvent.objects.filter(event="credits.granted").exists()
    assert not BillingAccount.objects.filter(user=user).exists()


# --- reads only read ---------------------------------------------------------------------------


def test_reading_a_users_account_creates_none(user: Any) -> None:
    account = billing_account_for(user=user)
    assert account.pk is None
    assert (account.plan, account.apex_enabled, account.balance, account.reserved) == ("free", False, 0, 0)
    assert not account.allows_byok
    assert credit_balance(user=user).available == 0
    assert not BillingAccount.objects.exists()


def test_get_me_creates_no_account(user: Any, user_client: Any) -> None:
    response = user_client.get("/api/me")
    assert response.status_code == 200
    assert (response.json()["plan"], response.json()["apex_enabled"]) == ("free", False)
    assert not BillingAccount.objects.exists()


# --- plan and entitlements -----------------------------------------------------------------


def test_plan_and_apex_changes_are_audited(user: Any) -> None:
    account = billing_plan_set(user=user, plan="alpha")
    assert account.allows_byok
    assert _code(lambda: billing_plan_set(user=user, plan="platinum")) == "invalid_input"
    assert billing_apex_set(user=user, enabled=True).apex_enabled
    billing_apex_set(user=user, enabled=True)  # no change, no second audit row
    assert not billing_apex_set(user=user, enabled=False).apex_enabled
    events = list(AuditEvent.objects.filter(event__startswith="billing.").values_list("event", flat=True))
    assert sorted(events) == ["billing.apex_granted", "billing.apex_revoked", "billing.plan_changed"]


# --- append-only -----------------------------------------------------------------------------


def test_ledger_has_no_update_or_delete_path(funded_user: Any) -> None:
    entry = LedgerEntry.objects.get()
    entry.amount = 1
    with pytest.raises(TypeError):
        entry.save()
    with pytest.raises(TypeError):
        entry.delete()
    with pytest.raises(TypeError):
        LedgerEntry.objects.filter(pk=entry.pk).update(amount=1)
    with pytest.raises(TypeError):
        LedgerEntry.objects.filter(pk=entry.pk).delete()


def test_database_refuses_to_edit_the_ledger(funded_user: Any) -> None:
    entry = LedgerEntry.objects.get()
    for sql in (
        "UPDATE credits_ledgerentry SET amount = 0 WHERE id = %s",
        "DELETE FROM credits_ledgerentry WHERE id = %s",
    ):
        with pytest.raises(Exception, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [entry.pk])
    assert LedgerEntry.objects.get().amount == 100 * CREDIT


def test_database_refuses_a_negative_available_balance(funded_user: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        BillingAccount.objects.filter(user=funded_user).update(reserved=100 * CREDIT + 1)


def test_hold_and_settle_are_one_statement_each(funded_user: Any) -> None:
    from django.test.utils import CaptureQueriesContext

    def statements(queries: CaptureQueriesContext) -> list[str]:
        return [q["sql"].lstrip() for q in queries if "SAVEPOINT" not in q["sql"]]

    with CaptureQueriesContext(connection) as hold_queries:
        hold = credit_hold(user=funded_user, amount=1_000, idempotency_key="h")
    with CaptureQueriesContext(connection) as settle_queries:
        credit_settle(hold_id=hold.pk, actual_amount=400, idempotency_key="h")
    # hold: the reserving statement; settle: read the hold, then the settling statement.
    assert [sql[:4] for sql in statements(hold_queries)] == ["WITH"]
    assert [sql[:4] for sql in statements(settle_queries)] == ["SELE", "WITH"]
    assert ledger_mismatches() == []
