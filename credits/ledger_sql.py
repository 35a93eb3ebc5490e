"""Every money rule of the ledger, each as one SQL statement (PostgreSQL).

A statement is built by a pure function that returns its SQL text and parameters (no I/O, no
connection), and its row is turned into what the caller needs by another pure function. So the
services run them through Django's connection (`credits.services.common.statement_fetch`) and an
async caller can run the very same text on an async psycopg connection, with no thread hand-off.

Each write is one statement whose check and write happen together, under the row locks its own
UPDATEs (or ``FOR UPDATE`` reads) take: nothing can slip in between a check and its write, and
the lock on the account row — the one hot row per user — is held only for that statement. Run
in autocommit, the statement is its own transaction; inside a caller's transaction, in a
savepoint. A statement that refuses returns no row and writes nothing; the caller then reads
(`hold_get`, `account_get`, …) to say why. Locks are taken hold first, then account, and no
statement locks more than one account, so these statements cannot deadlock with each other.

The statement (`credits.selectors.ledger_entries_for`) lists entries by id: every entry is
INSERTed while its statement holds a lock on the account row (``FOR UPDATE``, or ``FOR SHARE``
for the zero-amount usage record) until its transaction ends, so the id it draws follows the
order in which the balance moved — each entry's ``balance_after`` is the previous entry's plus
its amount. ``created_at`` is the time the service was called (before any wait for the lock):
entries written in the same moment may show times a few milliseconds apart in either order.

The database keeps the invariants whatever the code does: CHECK constraints (``balance >=
reserved``, ``reserved >= 0``, a settlement never credits, …) and the append-only trigger on
the ledger (see the models and their migrations).

Every value is a bound parameter. Values in an ``INSERT … SELECT`` list carry a cast, since a
select list, unlike VALUES, does not take the target columns' types (and a server-side bound
parameter would otherwise arrive as text). JSON goes through psycopg's ``Jsonb`` adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, overload

from django.db import DEFAULT_DB_ALIAS
from psycopg.types.json import Jsonb

from credits.models import DEFAULT_ALERT_THRESHOLDS, BillingAccount, CreditHold, HoldStatus, LedgerEntry, Plan

ACCOUNTS = BillingAccount._meta.db_table
HOLDS = CreditHold._meta.db_table
ENTRIES = LedgerEntry._meta.db_table

# Every column of each table, in the models' field order (what `Model.from_db` expects).
ACCOUNT_COLUMNS = (
    "id",
    "user_id",
    "plan",
    "apex_enabled",
    "balance",
    "reserved",
    "created_at",
    "updated_at",
    "alert_thresholds",
    "alert_band",
    "alert_warned",
)
HOLD_COLUMNS = (
    "id",
    "account_id",
    "category",
    "amount",
    "status",
    "idempotency_key",
    "fingerprint",
    "model",
    "price_key",
    "input_tokens_estimate",
    "max_tokens",
    "details",
    "expires_at",
    "created_at",
    "resolved_at",
    "requested_amount",
    "overrun",
    "resolution_key",
    "resolution_fingerprint",
)
ENTRY_COLUMNS = (
    "id",
    "account_id",
    "amount",
    "category",
    "balance_after",
    "idempotency_key",
    "fingerprint",
    "hold_id",
    "description",
    "model",
    "price_key",
    "units",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "key_source",
    "details",
    "pricing",
    "flagged",
    "created_at",
)

_JSON_COLUMNS = frozenset({"details", "pricing"})

M = TypeVar("M", BillingAccount, CreditHold, LedgerEntry)


@dataclass(frozen=True, slots=True)
class Statement:
    """SQL text with ``%(name)s`` placeholders, and the values to bind to them."""

    sql: str
    params: dict[str, Any]


def _returning(columns: tuple[str, ...], table: str = "") -> str:
    prefix = f"{table}." if table else ""
    return ", ".join(prefix + column for column in columns)


# --- Rows into model instances -----------------------------------------------------------------


def _instance(model: type[M], columns: tuple[str, ...], row: tuple[Any, ...] | None) -> M | None:
    if row is None:
        return None
    values = [
        # Django's connection hands jsonb back as text (for JSONField's decoder); psycopg's
        # default, on a connection of its own, is already-decoded JSON.
        json.loads(value) if column in _JSON_COLUMNS and isinstance(value, str) else value
        for column, value in zip(columns, row, strict=True)
    ]
    return model.from_db(DEFAULT_DB_ALIAS, list(columns), values)


@overload
def account_from_row(row: tuple[Any, ...]) -> BillingAccount: ...
@overload
def account_from_row(row: None) -> None: ...
def account_from_row(row: tuple[Any, ...] | None) -> BillingAccount | None:
    return _instance(BillingAccount, ACCOUNT_COLUMNS, row)


@overload
def hold_from_row(row: tuple[Any, ...]) -> CreditHold: ...
@overload
def hold_from_row(row: None) -> None: ...
def hold_from_row(row: tuple[Any, ...] | None) -> CreditHold | None:
    return _instance(CreditHold, HOLD_COLUMNS, row)


@overload
def entry_from_row(row: tuple[Any, ...]) -> LedgerEntry: ...
@overload
def entry_from_row(row: None) -> None: ...
def entry_from_row(row: tuple[Any, ...] | None) -> LedgerEntry | None:
    return _instance(LedgerEntry, ENTRY_COLUMNS, row)


# --- Reads (to explain a refusal, or to find what a replay returns) ------------------------------


def account_get(*, user_id: int) -> Statement:
    sql = f"SELECT {_returning(ACCOUNT_COLUMNS)} FROM {ACCOUNTS} WHERE user_id = %(user_id)s"  # noqa: S608 - constant identifiers; values are bound
    return Statement(sql, {"user_id": user_id})


def hold_get(*, hold_id: int) -> Statement:
    sql = f"SELECT {_returning(HOLD_COLUMNS)} FROM {HOLDS} WHERE id = %(hold_id)s"  # noqa: S608 - see above
    return Statement(sql, {"hold_id": hold_id})


def hold_by_key(*, user_id: int, idempotency_key: str) -> Statement:
    sql = f"""
        SELECT {_returning(HOLD_COLUMNS, "h")} FROM {HOLDS} h JOIN {ACCOUNTS} a ON a.id = h.account_id
        WHERE a.user_id = %(user_id)s AND h.idempotency_key = %(key)s
    """  # noqa: S608 - see above
    return Statement(sql, {"user_id": user_id, "key": idempotency_key})


def entry_by_key(*, user_id: int, idempotency_key: str) -> Statement:
    """The direct entry (charge, grant, adjustment, usage record) with this key."""
    sql = f"""
        SELECT {_returning(ENTRY_COLUMNS, "e")} FROM {ENTRIES} e JOIN {ACCOUNTS} a ON a.id = e.account_id
        WHERE a.user_id = %(user_id)s AND e.idempotency_key = %(key)s AND e.hold_id IS NULL
    """  # noqa: S608 - see above
    return Statement(sql, {"user_id": user_id, "key": idempotency_key})


def entry_of_hold(*, hold_id: int) -> Statement:
    sql = f"SELECT {_returning(ENTRY_COLUMNS)} FROM {ENTRIES} WHERE hold_id = %(hold_id)s"  # noqa: S608 - see above
    return Statement(sql, {"hold_id": hold_id})


# --- Billing accounts --------------------------------------------------------------------------


def account_create(*, user_id: int, now: datetime) -> Statement:
    """A free-plan account with nothing on it, unless the user has one (then: no row)."""
    sql = f"""
        INSERT INTO {ACCOUNTS} (
            user_id, plan, apex_enabled, balance, reserved, created_at, updated_at,
            alert_thresholds, alert_band, alert_warned
        )
        VALUES (
            %(user_id)s, %(plan)s, false, 0, 0, %(now)s, %(now)s,
            %(thresholds)s::bigint[], NULL, false
        )
        ON CONFLICT (user_id) DO NOTHING
        RETURNING {_returning(ACCOUNT_COLUMNS)}
    """  # noqa: S608 - see above
    # The alert band is the trigger's to set (`credits_balance_alert`).
    params = {"user_id": user_id, "plan": Plan.FREE.value, "now": now, "thresholds": list(DEFAULT_ALERT_THRESHOLDS)}
    return Statement(sql, params)


# --- Ledger entries ------------------------------------------------------------------------------


def _entry_insert(*, account_id: str, amount: str, balance_after: str, hold_id: str, pricing: str, flagged: str) -> str:
    """``INSERT INTO entries (…) SELECT …``: the columns a statement computes are given as SQL
    expressions; the rest come from the parameters of `_entry_params`."""
    return f"""
        INSERT INTO {ENTRIES} (
            account_id, amount, category, balance_after, idempotency_key, fingerprint, hold_id,
            description, model, price_key, units, input_tokens, output_tokens, cached_tokens,
            key_source, details, pricing, flagged, created_at
        )
        SELECT
            {account_id}, {amount}, %(category)s::text, {balance_after}, %(key)s::text,
            %(fingerprint)s::text, {hold_id}, %(description)s::text, %(model)s::text,
            %(price_key)s::text, %(units)s::bigint, %(input_tokens)s::bigint, %(output_tokens)s::bigint,
            %(cached_tokens)s::bigint, %(key_source)s::text, %(details)s::jsonb, {pricing},
            {flagged}, %(now)s::timestamptz
    """


def _entry_params(entry: LedgerEntry, now: datetime) -> dict[str, Any]:
    return {
        "amount": entry.amount,
        "category": str(entry.category),
        "key": entry.idempotency_key,
        "fingerprint": entry.fingerprint,
        "description": entry.description,
        "model": entry.model,
        "price_key": entry.price_key,
        "units": entry.units,
        "input_tokens": entry.input_tokens,
        "output_tokens": entry.output_tokens,
        "cached_tokens": entry.cached_tokens,
        "key_source": str(entry.key_source),
        "details": Jsonb(entry.details),
        "pricing": Jsonb(entry.pricing),
        "now": now,
    }


def entry_post(*, user_id: int, entry: LedgerEntry, now: datetime) -> Statement:
    """Move the balance by ``entry.amount`` (a charge, a grant, an adjustment) and append the
    entry with the balance that results — if the available balance stays ≥ 0. No row: refused
    (too few credits, or no account). A reused key raises IntegrityError, undoing the UPDATE."""
    insert = _entry_insert(
        account_id="account.id",
        amount="%(amount)s::bigint",
        balance_after="account.balance",
        hold_id="NULL::bigint",
        pricing="%(pricing)s::jsonb",
        flagged="false",
    )
    sql = f"""
        WITH account AS (
            UPDATE {ACCOUNTS} SET balance = balance + %(amount)s, updated_at = %(now)s
            WHERE user_id = %(user_id)s AND balance - reserved + %(amount)s >= 0
            RETURNING id, balance
        )
        {insert} FROM account
        RETURNING {_returning(ENTRY_COLUMNS)}
    """  # noqa: S608 - see above
    return Statement(sql, _entry_params(entry, now) | {"user_id": user_id})


def usage_record(*, user_id: int, entry: LedgerEntry, now: datetime) -> Statement:
    """Append a zero-amount entry (an LLM call on the user's own key) with the account's balance.

    It moves no money, so a share lock on the account row is enough (``FOR SHARE``): BYOK calls
    of one user don't queue behind each other, yet a money statement that holds the row's lock
    (its entry already in the sequence, not yet committed) is waited for, and its balance is the
    one recorded — so the record never lists after an entry whose balance it does not carry.
    No row: the user has no account yet.
    """
    insert = _entry_insert(
        account_id="a.id",
        amount="0",
        balance_after="a.balance",
        hold_id="NULL::bigint",
        pricing="%(pricing)s::jsonb",
        flagged="false",
    )
    sql = f"""
        {insert} FROM {ACCOUNTS} a WHERE a.user_id = %(user_id)s
        FOR SHARE OF a
        RETURNING {_returning(ENTRY_COLUMNS)}
    """
    return Statement(sql, _entry_params(entry, now) | {"user_id": user_id})


# --- Holds ---------------------------------------------------------------------------------------


def hold_reserve(*, user_id: int, hold: CreditHold, now: datetime) -> Statement:
    """Reserve ``hold.amount`` and insert the open hold — if ``balance - reserved >= amount``.
    No row: refused (too few credits, or no account). A reused key raises IntegrityError."""
    sql = f"""
        WITH account AS (
            UPDATE {ACCOUNTS} SET reserved = reserved + %(amount)s, updated_at = %(now)s
            WHERE user_id = %(user_id)s AND balance - reserved >= %(amount)s
            RETURNING id
        )
        INSERT INTO {HOLDS} (
            account_id, category, amount, status, idempotency_key, fingerprint, model, price_key,
            input_tokens_estimate, max_tokens, details, expires_at, created_at, resolved_at,
            requested_amount, overrun, resolution_key, resolution_fingerprint
        )
        SELECT
            account.id, %(category)s::text, %(amount)s::bigint, %(open)s::text, %(key)s::text,
            %(fingerprint)s::text, %(model)s::text, %(price_key)s::text, %(input_tokens_estimate)s::bigint,
            %(max_tokens)s::bigint, %(details)s::jsonb, %(expires_at)s::timestamptz,
            %(now)s::timestamptz, NULL::timestamptz, NULL::bigint, false, '', ''
        FROM account
        RETURNING {_returning(HOLD_COLUMNS)}
    """  # noqa: S608 - see above
    params = {
        "user_id": user_id,
        "category": str(hold.category),
        "amount": hold.amount,
        "open": HoldStatus.OPEN.value,
        "key": hold.idempotency_key,
        "fingerprint": hold.fingerprint,
        "model": hold.model,
        "price_key": hold.price_key,
        "input_tokens_estimate": hold.input_tokens_estimate,
        "max_tokens": hold.max_tokens,
        "details": Jsonb(hold.details),
        "expires_at": hold.expires_at,
        "now": now,
    }
    return Statement(sql, params)


def hold_settle(
    *,
    hold_id: int,
    requested: int,
    resolution_key: str,
    resolution_fingerprint: str,
    entry: LedgerEntry,
    now: datetime,
) -> Statement:
    """Settle a hold that is open, or expired by the sweeper (a late settlement), in one go:
    mark it settled, release what it still reserves, charge ``requested`` — or, if the account
    can't cover that, what it has available (never below zero) — and append the entry.

    ``entry`` gives what the entry says (category, tokens, details, pricing, keys); the
    statement fills in the amount charged, the balance after, and what only it knows: a late
    settlement gets ``"late": true`` in its pricing, one charged less than requested gets
    ``"uncollected"`` and is ``flagged``. No row: the hold was settled or voided already (or
    does not exist).
    """
    insert = _entry_insert(
        account_id="moved.id",
        amount="-account.charged",
        balance_after="moved.balance",
        hold_id="resolved.id",
        pricing="""%(pricing)s::jsonb
            || CASE WHEN hold.in_time THEN '{}'::jsonb ELSE '{"late": true}'::jsonb END
            || CASE WHEN account.charged < %(requested)s::bigint
                    THEN jsonb_build_object('uncollected', %(requested)s::bigint - account.charged)
                    ELSE '{}'::jsonb END""",
        flagged="account.charged < %(requested)s::bigint",
    )
    # The hold's row is locked first and re-read at its latest committed version (so of two
    # racing resolutions exactly one finds it unresolved); then its account's row, from which
    # the charge is computed; both rows are then written, and the entry appended.
    #
    # `moved` computes the charge again from the account row it updates, rather than taking
    # `account.charged`: PostgreSQL checks the CHECK constraints on the row an UPDATE first
    # finds (the version in the statement's snapshot) before it notices a newer committed
    # version and re-applies the SET to that one. Computed from the row's own columns, the
    # first try is consistent too; the final one is computed from the version `account` locked
    # and read, so it equals `account.charged`.
    sql = f"""
        WITH hold AS (
            SELECT id, account_id, amount, status = %(open)s AS in_time
            FROM {HOLDS} WHERE id = %(hold_id)s AND status IN (%(open)s, %(expired)s)
            FOR UPDATE
        ), account AS (
            SELECT a.id,
                CASE WHEN hold.in_time THEN hold.amount ELSE 0 END AS released,
                LEAST(
                    %(requested)s::bigint,
                    a.balance - a.reserved + CASE WHEN hold.in_time THEN hold.amount ELSE 0 END
                ) AS charged
            FROM {ACCOUNTS} a JOIN hold ON a.id = hold.account_id
            FOR UPDATE OF a
        ), resolved AS (
            UPDATE {HOLDS} h SET status = %(settled)s, resolved_at = %(now)s,
                requested_amount = %(requested)s, overrun = %(requested)s > h.amount,
                resolution_key = %(resolution_key)s, resolution_fingerprint = %(resolution_fingerprint)s
            FROM hold WHERE h.id = hold.id
            RETURNING h.id
        ), moved AS (
            UPDATE {ACCOUNTS} a
            SET balance = a.balance - LEAST(%(requested)s::bigint, a.balance - a.reserved + account.released),
                reserved = a.reserved - account.released, updated_at = %(now)s
            FROM account WHERE a.id = account.id
            RETURNING a.id, a.balance
        )
        {insert} FROM hold, account, resolved, moved
        RETURNING {_returning(ENTRY_COLUMNS)}
    """  # noqa: S608 - see above
    params = _entry_params(entry, now) | {
        "hold_id": hold_id,
        "requested": requested,
        "resolution_key": resolution_key,
        "resolution_fingerprint": resolution_fingerprint,
        "open": HoldStatus.OPEN.value,
        "expired": HoldStatus.EXPIRED.value,
        "settled": HoldStatus.SETTLED.value,
    }
    return Statement(sql, params)


def hold_void(*, hold_id: int, now: datetime) -> Statement:
    """Void a hold that is open (releasing what it reserves) or expired (stopping a late
    settlement; the sweeper released it already). No row: settled or voided already, or no such
    hold. Returns the voided hold."""
    sql = f"""
        WITH hold AS (
            SELECT id, account_id, amount, status = %(open)s AS was_open
            FROM {HOLDS} WHERE id = %(hold_id)s AND status IN (%(open)s, %(expired)s)
            FOR UPDATE
        ), released AS (
            UPDATE {ACCOUNTS} a SET reserved = a.reserved - hold.amount, updated_at = %(now)s
            FROM hold WHERE a.id = hold.account_id AND hold.was_open
            RETURNING a.id
        )
        UPDATE {HOLDS} h SET status = %(voided)s,
            resolved_at = CASE WHEN hold.was_open THEN %(now)s ELSE h.resolved_at END
        FROM hold WHERE h.id = hold.id
        RETURNING {_returning(HOLD_COLUMNS, "h")}
    """  # noqa: S608 - see above
    params = {
        "hold_id": hold_id,
        "now": now,
        "open": HoldStatus.OPEN.value,
        "expired": HoldStatus.EXPIRED.value,
        "voided": HoldStatus.VOIDED.value,
    }
    return Statement(sql, params)


def hold_expire_next(*, now: datetime) -> Statement:
    """Expire the open hold that expired first (before ``now``) and release what it reserves.
    Skips holds locked right now: a hold being settled or voided is that call's to resolve.
    Returns the hold's id; no row: nothing (else) is due."""
    sql = f"""
        WITH hold AS (
            SELECT id, account_id, amount FROM {HOLDS}
            WHERE status = %(open)s AND expires_at < %(now)s
            ORDER BY expires_at LIMIT 1
            FOR UPDATE SKIP LOCKED
        ), expired AS (
            UPDATE {HOLDS} h SET status = %(expired)s, resolved_at = %(now)s
            FROM hold WHERE h.id = hold.id
            RETURNING h.id
        )
        UPDATE {ACCOUNTS} a SET reserved = a.reserved - hold.amount, updated_at = %(now)s
        FROM hold, expired WHERE a.id = hold.account_id
        RETURNING expired.id
    """  # noqa: S608 - see above
    return Statement(sql, {"now": now, "open": HoldStatus.OPEN.value, "expired": HoldStatus.EXPIRED.value})
