"""The statement (API, dashboard CSV, selector) lists entries in the order their balances moved,
however the calls that wrote them raced: every adjacent pair adds up (the newer entry's
``balance_after`` is the older one's plus the newer one's amount)."""

from __future__ import annotations

import csv
import io
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_token_create
from credits.models import LedgerEntry
from credits.pricing import Usage
from credits.selectors import ledger_entries_for
from credits.services.holds import credit_hold, credit_settle
from credits.services.ledger import credit_charge, credit_grant, credit_usage_record

THREADS = 32
OPS_PER_THREAD = 6


def _backwards_clock() -> Callable[[], datetime]:
    """A clock that runs backwards, one millisecond a call: the stamps taken in Python before the
    account's lock come out in the opposite order of the calls (the race, every time)."""
    start = timezone.now()
    ticks = iter(range(10**9))
    lock = threading.Lock()

    def now() -> datetime:
        with lock:
            return start - timedelta(milliseconds=next(ticks))

    return now


@pytest.fixture(params=["real clock", "backwards clock"])
def clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "backwards clock":
        monkeypatch.setattr(timezone, "now", _backwards_clock())
    yield request.param


def _worker(index: int, user: Any, start: threading.Barrier, problems: list[str]) -> None:
    connection.ensure_connection()
    start.wait()
    try:
        for step in range(OPS_PER_THREAD):
            kind = (index + step) % 3
            key = f"{index}-{step}"
            if kind == 0:
                credit_charge(user=user, category="tool_call", units=1 + step, idempotency_key=f"c-{key}")
            elif kind == 1:
                hold = credit_hold(user=user, amount=5_000, idempotency_key=f"h-{key}")
                credit_settle(hold_id=hold.pk, actual_amount=100 + index, idempotency_key=f"s-{key}", known_hold=hold)
            else:
                credit_usage_record(user=user, model="claude-sonnet-4", usage=Usage(10, 5), idempotency_key=f"b-{key}")
    except Exception as exc:  # pragma: no cover - shown by the assertion
        problems.append(repr(exc))
    finally:
        connection.close()


def _pairs_that_do_not_add_up(newest_first: list[tuple[int, int, int]]) -> list[str]:
    """(id, amount, balance_after), newest first: the pairs whose running balance is wrong."""
    return [
        f"#{newer[0]} ({newer[1]:+d} -> {newer[2]}) listed above #{older[0]} (-> {older[2]})"
        for newer, older in itertools.pairwise(newest_first)
        if newer[2] != older[2] + newer[1]
    ]


def _mc(text: str) -> int:
    return int(Decimal(text) * 1000)


@pytest.mark.django_db(transaction=True)
def test_the_statement_reads_in_the_order_balances_moved(
    make_user: Any, connections_for: Callable[[int], None], clock: str
) -> None:
    # Given one account that many calls charge, settle and record usage on, all at once
    connections_for(THREADS)
    user = make_user()
    credit_grant(user=user, amount=10_000_000, reason="statement order", idempotency_key="seed")
    start = threading.Barrier(THREADS)
    problems: list[str] = []
    threads = [threading.Thread(target=_worker, args=(i, user, start, problems)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []
    total = LedgerEntry.objects.filter(account__user=user).count()
    assert total == 1 + THREADS * OPS_PER_THREAD

    # When the statement is read: the selector, every cursor page of the API, and the CSV
    selected = list(ledger_entries_for(user=user).values_list("id", "amount", "balance_after"))

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=user, name='statement').plaintext}")
    listed: list[tuple[int, int, int]] = []
    page: str | None = "/api/credits/ledger?limit=37"
    while page:
        body = api.get(page).json()
        listed += [(row["id"], row["amount"], row["balance_after"]) for row in body["results"]]
        page = body["next"]

    browser = Client()
    browser.force_login(user)
    rows = list(csv.DictReader(io.StringIO(browser.get("/credits/ledger.csv").content.decode())))
    exported = [(int(r["entry_id"]), _mc(r["amount_credits"]), _mc(r["balance_after_credits"])) for r in rows]

    # Then each lists every entry once, and every adjacent pair adds up
    assert len(selected) == len(listed) == len(exported) == total
    assert len({row[0] for row in listed}) == total  # the cursor pages neither skip nor repeat
    assert listed == selected
    assert exported == selected[::-1]  # the CSV: oldest first
    assert _pairs_that_do_not_add_up(selected) == []


@pytest.mark.django_db(transaction=True)
def test_a_byok_usage_record_waits_for_a_charge_in_flight(
    make_user: Any, connections_for: Callable[[int], None]
) -> None:
    """A charge has drawn its entry's id under the account's lock but not committed yet: a usage
    record written meanwhile lists after it, so it must carry the balance after the charge."""
    connections_for(2)
    user = make_user()
    credit_grant(user=user, amount=9_000, reason="seed", idempotency_key="seed")
    charged = threading.Event()
    results: list[Any] = []

    def charge_and_linger() -> None:
        try:
            with transaction.atomic():
                results.append(credit_charge(user=user, category="tool_call", units=3, idempotency_key="c1"))
                charged.set()
                time.sleep(0.5)  # the record is written now, while this charge holds the lock
        finally:
            charged.set()
            connection.close()

    charger = threading.Thread(target=charge_and_linger)
    charger.start()
    assert charged.wait(timeout=10)
    record = credit_usage_record(user=user, model="claude-sonnet-4", usage=Usage(1, 1), idempotency_key="b1")
    charger.join(timeout=10)

    charge = results[0]
    assert record.pk > charge.pk
    assert (record.amount, record.balance_after) == (0, charge.balance_after) == (0, 8_700)
    statement = list(ledger_entries_for(user=user).values_list("id", "amount", "balance_after"))
    assert _pairs_that_do_not_add_up(statement) == []
