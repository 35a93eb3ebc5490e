"""PostgreSQL fast paths for the two hot writes: reserving a hold and settling one in full.

Why this exists: the account row is the one hot row per user, and its throughput is one over
the time its lock is held. With the ORM, ``select_for_update`` → INSERT → UPDATE → COMMIT keeps
the lock across four round trips plus the ORM's Python work between them, and on a busy
machine that Python work (≈0.4 ms of CPU per ORM query here) dominated: the benchmark reached
under a fifth of pgbench's rate for the same transaction shape. Here each write is one
statement — a data-modifying CTE whose UPDATE takes the row lock, checks and moves the money,
and whose INSERT writes the hold or the entry with the new balance — run in autocommit, so the
lock is held for that one statement (and its commit) with no Python and no round trip inside.

The rules are the same as in `credits.services` (which decides when these apply and falls back
to the ORM path for everything else: refusals, replays, overruns, late settlements, SQLite):

* a hold is reserved only if ``balance - reserved >= amount`` — checked by the UPDATE's WHERE,
  under the row lock it takes, so no concurrent write can slip in between check and write;
* a settlement in full (actual ≤ held) can never take ``available`` below zero, since
  ``balance - actual >= reserved - held`` follows from ``actual <= held``;
* a hold is settled only if it is still open — checked by the hold's UPDATE, under its row
  lock — so it resolves exactly once, and the account moves only together with it;
* the CHECK constraint ``balance >= reserved`` stays the last line of defence either way.

Column lists and parameter conversion come from the models' ``_meta`` (what Django's own INSERT
compiler does), so a new field can't silently be left out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from credits.models import BillingAccount, CreditHold, HoldStatus, LedgerEntry
from niyra import rawsql


def hold_reserve(*, user_id: int, hold: CreditHold, now: datetime) -> bool:
    """Reserve ``hold.amount`` on the user's account and insert the hold, in one statement.

    Returns False, having written nothing, if the account is missing or short of credits. A
    duplicate idempotency key raises IntegrityError (the statement, UPDATE included, is undone).
    """
    db = rawsql.db()
    fields, columns, placeholders = rawsql.insert_columns(CreditHold, ("account_id",))
    accounts, holds = rawsql.quote(BillingAccount._meta.db_table), rawsql.quote(CreditHold._meta.db_table)
    sql = f"""
        WITH account AS (
            UPDATE {accounts} SET reserved = reserved + %s, updated_at = %s
            WHERE user_id = %s AND balance - reserved >= %s
            RETURNING id
        )
        INSERT INTO {holds} ({columns})
        SELECT account.id, {placeholders} FROM account
        RETURNING id, account_id
    """  # noqa: S608 - identifiers come from model metadata; every value is a bound parameter
    with db.cursor() as cursor:
        cursor.execute(sql, [hold.amount, now, user_id, hold.amount, *rawsql.save_params(db, hold, fields)])
        row = cursor.fetchone()
    if row is None:
        return False
    hold.pk, hold.account_id = row
    hold._state.adding = False
    hold._state.db = db.alias
    return True


def hold_get(hold_id: int) -> CreditHold | None:
    """The hold, read without a lock (a plain primary-key SELECT, without the ORM's compiling)."""
    fields, columns = rawsql.select_list(CreditHold, "h")
    with rawsql.db().cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {rawsql.quote(CreditHold._meta.db_table)} h WHERE h.id = %s", [hold_id])  # noqa: S608 - see above
        row = cursor.fetchone()
    return None if row is None else rawsql.from_row(CreditHold, fields, row)


def hold_settle_in_full(*, hold: CreditHold, entry: LedgerEntry, now: datetime) -> bool:
    """If the hold is still open: mark it settled, release it, debit ``-entry.amount`` (≤ held)
    and append ``entry`` with the balance that results — one statement. Returns False, having
    written nothing, if the hold was no longer open (settled, voided or expired meanwhile).

    ``hold`` carries the resolution to record (status, resolved_at, requested_amount, …).
    """
    assert -entry.amount <= hold.amount, "only a settlement in full (actual <= held) is this simple"
    db = rawsql.db()
    fields, columns, placeholders = rawsql.insert_columns(LedgerEntry, ("account_id", "balance_after"))
    accounts, holds = rawsql.quote(BillingAccount._meta.db_table), rawsql.quote(CreditHold._meta.db_table)
    entries = rawsql.quote(LedgerEntry._meta.db_table)
    # The hold's UPDATE takes its row lock and re-checks `status = 'open'` against the latest
    # committed version, so of two racing resolutions exactly one matches; the account moves
    # (and the entry is written) only if it did.
    sql = f"""
        WITH resolved AS (
            UPDATE {holds} SET status = %s, resolved_at = %s, requested_amount = %s, overrun = %s,
                resolution_key = %s, resolution_fingerprint = %s
            WHERE id = %s AND status = %s
            RETURNING account_id
        ), account AS (
            UPDATE {accounts} SET balance = balance + %s, reserved = reserved - %s, updated_at = %s
            WHERE id = (SELECT account_id FROM resolved)
            RETURNING id, balance
        )
        INSERT INTO {entries} ({columns})
        SELECT account.id, account.balance, {placeholders} FROM account
        RETURNING id, balance_after
    """  # noqa: S608 - identifiers come from model metadata; every value is a bound parameter
    hold_params: list[Any] = [
        str(hold.status),
        hold.resolved_at,
        hold.requested_amount,
        hold.overrun,
        hold.resolution_key,
        hold.resolution_fingerprint,
        hold.pk,
        HoldStatus.OPEN.value,
    ]
    account_params: list[Any] = [entry.amount, hold.amount, now]
    with db.cursor() as cursor:
        cursor.execute(sql, [*hold_params, *account_params, *rawsql.save_params(db, entry, fields)])
        row = cursor.fetchone()
    if row is None:
        return False
    entry.pk, entry.balance_after = row
    entry.account_id = hold.account_id
    entry._state.adding = False
    entry._state.db = db.alias
    return True
