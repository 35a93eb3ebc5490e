"""50 threads hammering one account on real PostgreSQL: holds, settles, voids, charges, and
replayed or reused idempotency keys, all at once. Then: never negative, nothing charged twice,
every hold resolved at most once, and `reconcile_ledger` clean."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Min, Sum

from core.errors import NiyraError
from credits.models import BillingAccount, CreditHold, HoldStatus, LedgerEntry
from credits.services.holds import credit_hold, credit_settle, credit_void
from credits.services.ledger import credit_charge, credit_grant

THREADS = 50
OPS_PER_THREAD = 24
START_BOUND_SECONDS = 60  # every thread has its session by then, or the barrier breaks (a hang bound)
START_BALANCE = 60_000  # small enough that "not enough credits" happens often


@dataclass
class Outcome:
    entries: dict[int, int] = field(default_factory=dict)  # entry id -> amount, as the services returned them
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


def _worker(index: int, user: Any, shared_holds: list[int], lock: threading.Lock, start: threading.Barrier) -> Outcome:
    rng = random.Random(index)
    out = Outcome()
    mine: list[tuple[str, dict[str, Any]]] = []  # charges this thread made, to replay
    connection.ensure_connection()  # all 50 sessions open before anyone starts
    start.wait()
    try:
        for step in range(OPS_PER_THREAD):
            op = rng.choice(["hold", "hold", "settle", "settle", "void", "charge", "charge", "replay", "reuse"])
            try:
                if op == "hold":
                    hold = credit_hold(user=user, amount=rng.randint(100, 3_000), idempotency_key=f"h-{index}-{step}")
                    with lock:
                        shared_holds.append(hold.pk)
                elif op in ("settle", "void"):
                    with lock:
                        # Any thread's hold: several threads race to resolve the same one.
                        hold_id = rng.choice(shared_holds) if shared_holds else None
                    if hold_id is None:
                        continue
                    if op == "void":
                        credit_void(hold_id=hold_id)
                    else:
                        # Same key and amount for the same hold from every thread: a replay returns
                        # the first entry, so the hold is still charged once.
                        actual = (hold_id * 7919) % 4_000
                        entry = credit_settle(hold_id=hold_id, actual_amount=actual, idempotency_key=f"s-{hold_id}")
                        out.entries[entry.pk] = entry.amount
                elif op == "charge":
                    params = {"category": "tool_call", "units": rng.randint(1, 5)}
                    key = f"c-{index}-{step}"
                    entry = credit_charge(user=user, idempotency_key=key, **params)
                    out.entries[entry.pk] = entry.amount
                    mine.append((key, params))
                elif op == "replay" and mine:
                    key, params = rng.choice(mine)
                    entry = credit_charge(user=user, idempotency_key=key, **params)
                    out.entries[entry.pk] = entry.amount
                elif op == "reuse" and mine:
                    key, params = rng.choice(mine)
                    credit_charge(user=user, idempotency_key=key, category="tool_call", units=params["units"] + 1)
                    out.unexpected.append(f"reused key {key} with other parameters was accepted")
            except NiyraError as exc:
                out.errors[exc.code] += 1
            except Exception as exc:  # pragma: no cover - reported by the assertion below
                out.unexpected.append(repr(exc))
    finally:
        connection.close()
    return out


@pytest.mark.django_db(transaction=True)
def test_fifty_threads_on_one_account(make_user: Any, connections_for: Callable[[int], None]) -> None:
    connections_for(THREADS)
    user = make_user()
    credit_grant(user=user, amount=START_BALANCE, reason="concurrency test", idempotency_key="seed")
    shared_holds: list[int] = []
    lock = threading.Lock()
    # A thread that can't open its session (the server out of connections) breaks the barrier
    # for all, and the test fails saying so, rather than waiting forever.
    start = threading.Barrier(THREADS, timeout=START_BOUND_SECONDS)
    outcomes: list[Outcome] = [Outcome() for _ in range(THREADS)]

    def run(i: int) -> None:
        try:
            outcomes[i] = _worker(i, user, shared_holds, lock, start)
        except Exception as exc:
            outcomes[i].unexpected.append(f"thread {i} never ran: {exc!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads)

    unexpected = [problem for outcome in outcomes for problem in outcome.unexpected]
    assert unexpected == []
    seen_errors = sum((outcome.errors for outcome in outcomes), Counter())
    assert set(seen_errors) <= {"insufficient_credits", "hold_already_resolved", "idempotency_conflict"}
    assert seen_errors["idempotency_conflict"] > 0
    assert seen_errors["hold_already_resolved"] > 0

    account = BillingAccount.objects.get(user=user)
    entries = LedgerEntry.objects.filter(account=account)

    # Never negative, at any point: every entry's balance_after is the balance right after it.
    assert entries.aggregate(low=Min("balance_after"))["low"] >= 0
    assert account.balance >= account.reserved >= 0

    # No double charge: one entry per direct key, at most one per hold, and the DB holds exactly
    # the entries the services handed back (a replay returns an existing one).
    direct_keys = Counter(entries.filter(hold__isnull=True).values_list("idempotency_key", flat=True))
    assert max(direct_keys.values()) == 1
    returned = {pk: amount for outcome in outcomes for pk, amount in outcome.entries.items()}
    debits = dict(entries.exclude(category="grant").values_list("pk", "amount"))
    assert returned == debits
    settled = CreditHold.objects.filter(account=account, status=HoldStatus.SETTLED)
    assert entries.filter(hold__isnull=False).count() == settled.count()
    assert settled.count() > 0

    # The books balance: money in - money out == balance, and reserved == open holds.
    assert START_BALANCE + sum(debits.values()) == account.balance
    open_sum = CreditHold.objects.filter(account=account, status=HoldStatus.OPEN).aggregate(s=Sum("amount"))["s"]
    assert account.reserved == (open_sum or 0)
    call_command("reconcile_ledger")  # raises CommandError (exit 1) on any mismatch


@pytest.mark.django_db(transaction=True)
def test_twins_with_one_key_charge_once(make_user: Any, connections_for: Callable[[int], None]) -> None:
    """Many callers send the same request at the same moment (a retry storm): the unique
    constraint lets one insert win and every other call returns that same entry or hold."""
    user = make_user()
    credit_grant(user=user, amount=START_BALANCE, reason="twins", idempotency_key="seed")
    twins = 20
    connections_for(twins)
    start = threading.Barrier(twins, timeout=START_BOUND_SECONDS)
    results: list[tuple[int, int] | str] = [""] * twins

    def run(i: int) -> None:
        connection.ensure_connection()
        start.wait()
        try:
            entry = credit_charge(user=user, category="enrichment", units=2, idempotency_key="storm")
            hold = credit_hold(user=user, amount=1_000, idempotency_key="storm")
            results[i] = (entry.pk, hold.pk)
        except Exception as exc:  # pragma: no cover - shown by the assertion
            results[i] = repr(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(twins)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(set(results)) == 1, results
    account = BillingAccount.objects.get(user=user)
    assert (account.balance, account.reserved) == (START_BALANCE - 4_000, 1_000)
    call_command("reconcile_ledger")
