"""Hypothesis drives random sequences of grants, charges, holds, settles, voids, expiries and
replayed or reused keys against the real services, and compares the ledger after every step
with a few lines of in-memory bookkeeping that obviously follow the rules."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test

from accounts.services import user_create
from core.errors import NiyraError
from credits.models import BillingAccount, HoldStatus
from credits.pricing import price_units
from credits.selectors import ledger_mismatches
from credits.services.holds import credit_hold, credit_holds_expire, credit_settle, credit_void
from credits.services.ledger import credit_adjust, credit_charge, credit_grant

_emails = itertools.count()


@dataclass
class ModelHold:
    amount: int
    status: str = HoldStatus.OPEN


def _raises(code: str, call: Any) -> None:
    with pytest.raises(NiyraError) as raised:
        call()
    assert raised.value.code == code


class Ledger(RuleBasedStateMachine):
    holds = Bundle("holds")
    charges = Bundle("charges")

    def __init__(self) -> None:
        super().__init__()
        self.user = user_create(email=f"model{next(_emails)}@example.com", password=None)
        self.balance = 0
        self.reserved = 0
        self.model_holds: dict[int, ModelHold] = {}
        self.keys = itertools.count()

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    @rule(amount=st.integers(1, 20_000))
    def grant(self, amount: int) -> None:
        credit_grant(user=self.user, amount=amount, reason="model", idempotency_key=f"g{next(self.keys)}")
        self.balance += amount

    @rule(amount=st.integers(-20_000, 20_000).filter(bool))
    def adjust(self, amount: int) -> None:
        call = lambda: credit_adjust(  # noqa: E731
            user=self.user, amount=amount, reason="model", idempotency_key=f"a{next(self.keys)}"
        )
        if self.available + amount < 0:
            _raises("insufficient_credits", call)
        else:
            call()
            self.balance += amount

    @rule(target=charges, category=st.sampled_from(["tool_call", "enrichment", "telephony"]), units=st.integers(1, 90))
    def charge(self, category: str, units: int) -> tuple[str, str, int, int | None]:
        key = f"c{next(self.keys)}"
        cost = price_units(category, units)
        if cost > self.available:
            _raises(
                "insufficient_credits",
                lambda: credit_charge(user=self.user, category=category, units=units, idempotency_key=key),
            )
            return (key, category, units, None)
        entry = credit_charge(user=self.user, category=category, units=units, idempotency_key=key)
        assert entry.amount == -cost
        self.balance -= cost
        return (key, category, units, entry.pk)

    @rule(charge=charges)
    def replay_charge(self, charge: tuple[str, str, int, int | None]) -> None:
        key, category, units, entry_id = charge
        if entry_id is None:
            return  # refused the first time: nothing to replay (a retry may now succeed)
        assert credit_charge(user=self.user, category=category, units=units, idempotency_key=key).pk == entry_id

    @rule(charge=charges)
    def reuse_key(self, charge: tuple[str, str, int, int | None]) -> None:
        key, category, units, entry_id = charge
        if entry_id is not None:
            call = lambda: credit_charge(user=self.user, category=category, units=units + 1, idempotency_key=key)  # noqa: E731
            _raises("idempotency_conflict", call)

    @rule(target=holds, amount=st.integers(1, 20_000))
    def hold(self, amount: int) -> int:
        key = f"h{next(self.keys)}"
        if amount > self.available:
            _raises("insufficient_credits", lambda: credit_hold(user=self.user, amount=amount, idempotency_key=key))
            return -1
        hold = credit_hold(user=self.user, amount=amount, idempotency_key=key, expires_in=timedelta(minutes=5))
        self.reserved += amount
        self.model_holds[hold.pk] = ModelHold(amount)
        return hold.pk

    @rule(hold_id=holds, actual=st.integers(0, 30_000))
    def settle(self, hold_id: int, actual: int) -> None:
        if hold_id < 0:
            return
        held = self.model_holds[hold_id]
        call = lambda: credit_settle(hold_id=hold_id, actual_amount=actual)  # noqa: E731
        if held.status in (HoldStatus.SETTLED, HoldStatus.VOIDED):
            _raises("hold_already_resolved", call)
            return
        released = held.amount if held.status == HoldStatus.OPEN else 0
        charged = min(actual, self.available + released)
        entry = call()
        assert entry.amount == -charged
        assert entry.flagged == (charged < actual)
        self.reserved -= released
        self.balance -= charged
        held.status = HoldStatus.SETTLED

    @rule(hold_id=consumes(holds))
    def void(self, hold_id: int) -> None:
        if hold_id < 0:
            return
        held = self.model_holds[hold_id]
        if held.status == HoldStatus.SETTLED:
            _raises("hold_already_resolved", lambda: credit_void(hold_id=hold_id))
            return
        credit_void(hold_id=hold_id)
        if held.status == HoldStatus.OPEN:
            self.reserved -= held.amount
        held.status = HoldStatus.VOIDED

    @rule()
    def expire_everything_open(self) -> None:
        credit_holds_expire(now=timezone.now() + timedelta(hours=1))
        for held in self.model_holds.values():
            if held.status == HoldStatus.OPEN:
                held.status = HoldStatus.EXPIRED
                self.reserved -= held.amount

    @invariant()
    def ledger_matches_the_model(self) -> None:
        account = BillingAccount.objects.filter(user=self.user).first()
        balance, reserved = (account.balance, account.reserved) if account else (0, 0)
        assert (balance, reserved) == (self.balance, self.reserved)
        assert balance >= reserved >= 0

    def teardown(self) -> None:
        assert ledger_mismatches() == []


@pytest.mark.django_db
def test_ledger_behaves_like_the_model() -> None:
    run_state_machine_as_test(
        Ledger,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,  # no example database written into the work tree
        ),
    )
