"""The money statements themselves: they write every column, they are pure (no connection),
they run as they are on an async psycopg connection, and the database's CHECK constraints
refuse what no statement may write."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from credits import ledger_sql
from credits.models import BillingAccount, CreditHold, HoldStatus, KeySource, LedgerEntry
from credits.selectors import ledger_mismatches
from credits.services.common import entry_draft
from credits.services.holds import credit_hold
from credits.services.ledger import credit_grant
from tests.credits.conftest import CREDIT


def _columns(model: type[models.Model]) -> list[str]:
    return [str(field.column) for field in model._meta.concrete_fields]


def _inserted_columns(statement: ledger_sql.Statement) -> tuple[str, set[str]]:
    found = re.search(r"INSERT INTO (\w+) \(([^)]*)\)", statement.sql)
    assert found, statement.sql
    return found[1], {column.strip() for column in found[2].split(",")}


def _every_insert() -> list[ledger_sql.Statement]:
    now = timezone.now()
    entry = entry_draft(amount=-1, category="tool_call", idempotency_key="k", fingerprint="f", description="d")
    hold = CreditHold(category="llm", amount=1, idempotency_key="k", fingerprint="f", expires_at=now)
    return [
        ledger_sql.account_create(user_id=1, now=now),
        ledger_sql.entry_post(user_id=1, entry=entry, now=now),
        ledger_sql.usage_record(user_id=1, entry=entry, now=now),
        ledger_sql.hold_reserve(user_id=1, hold=hold, now=now),
        ledger_sql.hold_settle(
            hold_id=1, requested=1, resolution_key="", resolution_fingerprint="f", entry=entry, now=now
        ),
    ]


def test_the_column_lists_are_the_models_columns() -> None:
    assert list(ledger_sql.ACCOUNT_COLUMNS) == _columns(BillingAccount)
    assert list(ledger_sql.HOLD_COLUMNS) == _columns(CreditHold)
    assert list(ledger_sql.ENTRY_COLUMNS) == _columns(LedgerEntry)


def test_every_insert_writes_every_column() -> None:
    """A column added to a model but not to the statements would be left to its database default
    (or fail): each INSERT names every concrete column but the generated primary key. Building
    the statements needs no database (this test has none): they are pure."""
    tables = {model._meta.db_table: model for model in (BillingAccount, CreditHold, LedgerEntry)}
    for statement in _every_insert():
        table, written = _inserted_columns(statement)
        assert written == set(_columns(tables[table])) - {"id"}, table


def _conninfo() -> dict[str, Any]:
    settings = connection.settings_dict
    info = {
        "host": settings["HOST"] or None,
        "port": settings["PORT"] or None,
        "user": settings["USER"] or None,
        "password": settings["PASSWORD"] or None,
        "dbname": settings["NAME"],
    }
    return {key: value for key, value in info.items() if value is not None}


@pytest.mark.django_db(transaction=True)
def test_the_same_statements_run_on_an_async_psycopg_connection(user: Any) -> None:
    """What the gateway's async path will do: the very text the services run, on a psycopg
    AsyncConnection (server-side parameter binding, psycopg's own JSON loading)."""
    credit_grant(user=user, amount=10 * CREDIT, reason="test", idempotency_key="g")
    now = timezone.now()

    def _hold(key: str) -> dict[str, Any]:
        return {
            "category": "llm",
            "amount": 4_000,
            "idempotency_key": key,
            "fingerprint": "f",
            "details": {"routed_call": "rc_1"},
            "expires_at": now + timedelta(minutes=5),
        }

    draft = CreditHold(**_hold("async"))

    async def hold_then_settle() -> tuple[CreditHold, LedgerEntry]:
        async with await psycopg.AsyncConnection.connect(**_conninfo(), autocommit=True) as conn:

            async def fetch(statement: ledger_sql.Statement) -> Any:
                return await (await conn.execute(statement.sql, statement.params)).fetchone()

            # Every other statement once, on this connection: they bind and run.
            assert await fetch(ledger_sql.account_create(user_id=user.pk, now=now)) is None  # has one
            charge = entry_draft(
                amount=-500, category="tool_call", idempotency_key="c", fingerprint="c", description=""
            )
            charged = ledger_sql.entry_from_row(
                await fetch(ledger_sql.entry_post(user_id=user.pk, entry=charge, now=now))
            )
            assert charged is not None and (charged.amount, charged.balance_after) == (-500, 9_500)
            byok = entry_draft(
                amount=0,
                category="llm",
                idempotency_key="b",
                fingerprint="b",
                description="",
                key_source=KeySource.BYOK,
            )
            assert await fetch(ledger_sql.usage_record(user_id=user.pk, entry=byok, now=now)) is not None
            grant = entry_draft(amount=500, category="grant", idempotency_key="g2", fingerprint="g", description="")
            assert await fetch(ledger_sql.entry_post(user_id=user.pk, entry=grant, now=now)) is not None
            voided = ledger_sql.hold_from_row(
                await fetch(ledger_sql.hold_reserve(user_id=user.pk, hold=CreditHold(**_hold("v")), now=now))
            )
            assert voided is not None
            assert await fetch(ledger_sql.hold_void(hold_id=voided.pk, now=now)) is not None
            assert await fetch(ledger_sql.hold_expire_next(now=now)) is None  # nothing is due
            assert await fetch(ledger_sql.entry_by_key(user_id=user.pk, idempotency_key="c")) is not None

            hold = ledger_sql.hold_from_row(await fetch(ledger_sql.hold_reserve(user_id=user.pk, hold=draft, now=now)))
            assert hold is not None
            entry = entry_draft(
                amount=-1_500,
                category="llm",
                idempotency_key=hold.idempotency_key,
                fingerprint="s",
                description="settled",
                key_source=KeySource.PLATFORM,
                details=hold.details,
            )
            statement = ledger_sql.hold_settle(
                hold_id=hold.pk, requested=1_500, resolution_key="", resolution_fingerprint="s", entry=entry, now=now
            )
            settled = ledger_sql.entry_from_row(await fetch(statement))
            assert settled is not None
            return hold, settled

    hold, entry = asyncio.run(hold_then_settle())
    assert (hold.amount, hold.status, hold.details) == (4_000, HoldStatus.OPEN, {"routed_call": "rc_1"})
    assert (entry.amount, entry.balance_after, entry.hold_id, entry.flagged) == (-1_500, 8_500, hold.pk, False)
    assert entry.details == {"routed_call": "rc_1"}
    assert entry.pricing == {"book": entry.pricing["book"]}
    account = BillingAccount.objects.get(user=user)
    assert (account.balance, account.reserved) == (8_500, 0)
    assert ledger_mismatches() == []


# --- CHECK constraints ------------------------------------------------------------------------------


def _refused(constraint: str, write: Any) -> None:
    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        write()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("constraint", "change"),
    [
        ("credit_hold_status_known", {"status": "lost", "resolved_at": timezone.now()}),
        ("credit_hold_resolved_iff_not_open", {"resolved_at": timezone.now()}),
        ("credit_hold_resolved_iff_not_open", {"status": HoldStatus.VOIDED}),
        ("credit_hold_requested_iff_settled", {"requested_amount": 10}),
        ("credit_hold_requested_iff_settled", {"status": HoldStatus.SETTLED, "resolved_at": timezone.now()}),
        ("credit_hold_overrun_only_above_hold", {"overrun": True}),
        ("credit_hold_amount_positive", {"amount": 0}),
    ],
)
def test_the_database_refuses_an_impossible_hold(funded_user: Any, constraint: str, change: dict[str, Any]) -> None:
    hold = credit_hold(user=funded_user, amount=500, idempotency_key="h")
    _refused(constraint, lambda: CreditHold.objects.filter(pk=hold.pk).update(**change))
    hold.refresh_from_db()
    assert (hold.status, hold.amount, hold.resolved_at) == (HoldStatus.OPEN, 500, None)


@pytest.mark.django_db
def test_an_overrun_is_only_a_settlement_above_the_hold(funded_user: Any) -> None:
    hold = credit_hold(user=funded_user, amount=500, idempotency_key="h")
    settled = {"status": HoldStatus.SETTLED, "resolved_at": timezone.now(), "overrun": True}
    _refused(
        "credit_hold_overrun_only_above_hold",
        lambda: CreditHold.objects.filter(pk=hold.pk).update(requested_amount=500, **settled),
    )
    CreditHold.objects.filter(pk=hold.pk).update(requested_amount=501, **settled)  # allowed


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("constraint", "fields"),
    [
        ("ledger_settlement_never_credits", {"amount": 1, "settles": True}),
        ("ledger_only_settlements_flagged", {"amount": -1, "flagged": True}),
        ("ledger_byok_costs_nothing", {"amount": -1, "key_source": KeySource.BYOK}),
        ("ledger_balance_after_non_negative", {"amount": -1, "balance_after": -1}),
    ],
)
def test_the_database_refuses_an_impossible_entry(funded_user: Any, constraint: str, fields: dict[str, Any]) -> None:
    account = BillingAccount.objects.get(user=funded_user)
    hold = credit_hold(user=funded_user, amount=500, idempotency_key="h") if fields.pop("settles", False) else None
    before = LedgerEntry.objects.count()
    entry = LedgerEntry(
        account=account,
        category="llm",
        balance_after=fields.pop("balance_after", account.balance),
        idempotency_key="x",
        fingerprint="x",
        hold=hold,
        **fields,
    )
    _refused(constraint, lambda: entry.save(force_insert=True))
    assert LedgerEntry.objects.count() == before
