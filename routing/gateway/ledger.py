"""A routed call's money, on the gateway's async pool: the hold before the provider, and the
close after it — settle, void or BYOK usage record, with the routed-call row (for a BYOK call
also its key's last-use stamp; for a fallback its daily cap trued up) — in one round trip.

The statements are `credits.ledger_sql`'s, built from the drafts the credits services build
(`hold_draft`, `Settlement`, `usage_record_draft`), so the hot path runs exactly what the sync
services run, with no thread hop. Only the rare paths hop to the services (`in_thread`): a hold
refused (to say why — too few credits — or to find the replay), and a key whose status a call
contradicted (`routing.gateway.core`, after the answer).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone
from psycopg.types.json import Jsonb

from accounts.models import User
from byok.key_sql import USED_RESOLUTION_SECONDS, provider_key_used
from core import errors
from core.errors import NiyraError
from credits import ledger_sql
from credits.ledger_sql import Statement
from credits.metrics import credits_charged
from credits.models import CreditHold, KeySource
from credits.pricing import Usage
from credits.services.holds import Settlement, hold_draft, hold_place
from credits.services.ledger import usage_record_draft
from routing.catalog import CatalogModel
from routing.gateway import db
from routing.gateway.auth import Caller
from routing.models import FallbackSpend, RoutedCall

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CALLS = RoutedCall._meta.db_table
SPEND = FallbackSpend._meta.db_table
BALANCE_AFTER = ledger_sql.ENTRY_COLUMNS.index("balance_after")
AMOUNT = ledger_sql.ENTRY_COLUMNS.index("amount")
CATEGORY = ledger_sql.ENTRY_COLUMNS.index("category")


def hold_ttl() -> timedelta:
    """Longer than any call can take, so the sweeper never races a call in flight."""
    return timedelta(seconds=max(300, 3 * int(settings.PROVIDER_TIMEOUT_SECONDS)))


@dataclass(frozen=True, slots=True)
class CallClose:
    """How a routed call ended: what the provider reported, and what to do with the money.
    ``charge``: settle the hold for ``usage`` (False: void it — a failed call costs nothing)."""

    call_id: uuid.UUID
    user_id: int
    model: CatalogModel
    surface: str
    key_source: str
    hold: CreditHold | None
    usage: Usage
    charge: bool
    outcome: str
    stream: bool
    fell_back: bool
    latency_ms: int
    key_fingerprint: str | None
    cap_hold: CapHold | None = None  # a fallback's share of the daily cap, trued up at close


@dataclass(frozen=True, slots=True)
class CapHold:
    """What a fallback call took from the user's daily fallback cap: its hold's amount, on
    the UTC day it started (a call that runs past midnight counts on the day it was held)."""

    day: date
    amount: int


@dataclass(frozen=True, slots=True)
class CallReceipt:
    """Millicredits charged; what the usage costs at the book's rates (a BYOK call's saving);
    the balance after the call's entry (None when no entry was written)."""

    credits_charged: int
    would_cost: int
    balance_after: int | None


def _details(call_id: uuid.UUID, model: CatalogModel) -> dict[str, Any]:
    return {"routed_call": str(call_id), "model": model.id}


def call_hold_draft(*, call_id: uuid.UUID, model: CatalogModel, worst: Usage) -> CreditHold:
    """The hold a routed call places: its worst case, priced with the model's price key."""
    return hold_draft(
        idempotency_key=f"routed:{call_id}",
        model=model.id,
        price_key=model.price_key,
        worst=worst,
        details=_details(call_id, model),
        expires_in=hold_ttl(),
        now=timezone.now(),
    )


async def hold_open(
    *, caller: Caller, call_id: uuid.UUID, model: CatalogModel, worst: Usage, draft: CreditHold | None = None
) -> CreditHold:
    """Reserve the call's worst case (``draft``, when the caller built it already) in one
    statement, or raise the exact refusal (``insufficient_credits`` with what is available and
    required)."""
    now = timezone.now()
    if draft is None:
        draft = call_hold_draft(call_id=call_id, model=model, worst=worst)
    try:
        row = await db.fetch_one(ledger_sql.hold_reserve(user_id=caller.user_id, hold=draft, now=now))
    except psycopg.IntegrityError:  # the key is taken: the service finds the replay or the conflict
        row = None
    if row is not None:
        return ledger_sql.hold_from_row(row)
    return await in_thread(_hold_explained, user_id=caller.user_id, draft=draft)


def _hold_explained(*, user_id: int, draft: CreditHold) -> CreditHold:
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise NiyraError(errors.AUTHENTICATION_FAILED)
    return hold_place(user=user, draft=draft)


def fallback_reserve(*, user_id: int, day: date, amount: int, cap: int) -> Statement:
    """Take ``amount`` from the user's fallback cap for ``day`` — if what that day has taken
    stays within ``cap``. One statement: the row is created or raised under its own lock, so
    concurrent fallbacks queue on it and never take more than the cap between them. No row:
    refused."""
    sql = f"""
        INSERT INTO {SPEND} (user_id, day, used_mc)
        SELECT %(user_id)s, %(day)s, %(amount)s WHERE %(amount)s::bigint <= %(cap)s::bigint
        ON CONFLICT (user_id, day) DO UPDATE SET used_mc = {SPEND}.used_mc + EXCLUDED.used_mc
        WHERE {SPEND}.used_mc + EXCLUDED.used_mc <= %(cap)s::bigint
        RETURNING used_mc
    """
    return Statement(sql, {"user_id": user_id, "day": day, "amount": amount, "cap": cap})


def fallback_true_up(*, user_id: int, cap_hold: CapHold, hold_id: int | None) -> Statement:
    """Give back what a fallback took from the cap and did not spend: its hold's amount less
    what the hold's settlement charged (the whole amount when nothing was charged). Run after
    the settle statement, in the same round trip, so it reads the entry that statement wrote."""
    sql = f"""
        UPDATE {SPEND} SET used_mc = used_mc - %(amount)s::bigint
            + COALESCE((SELECT -amount FROM {ledger_sql.ENTRIES} WHERE hold_id = %(hold_id)s::bigint), 0)
        WHERE user_id = %(user_id)s AND day = %(day)s
    """  # noqa: S608 - constant identifiers; values are bound
    return Statement(sql, {"user_id": user_id, "day": cap_hold.day, "amount": cap_hold.amount, "hold_id": hold_id})


async def fallback_take(*, user_id: int, amount: int, cap: int, now: datetime) -> CapHold | None:
    """Take a fallback's hold amount from the user's daily cap; None: past the cap."""
    cap_hold = CapHold(day=now.date(), amount=amount)  # `now` is UTC (USE_TZ)
    row = await db.fetch_one(fallback_reserve(user_id=user_id, day=cap_hold.day, amount=amount, cap=cap))
    return cap_hold if row is not None else None


async def fallback_give_back(*, user_id: int, cap_hold: CapHold) -> None:
    """Return a whole take (its credits hold was refused: nothing was held, nothing charged)."""
    await db.execute(fallback_true_up(user_id=user_id, cap_hold=cap_hold, hold_id=None))


def routed_call_insert(close: CallClose, *, would_cost: int, now: datetime) -> Statement:
    """The routed-call row. What the call was charged, and the balance after it, are read from
    its ledger entry (in the same round trip, after the settle or usage record): only that
    statement knows what it collected. A second close of the same call writes nothing (no row)."""
    usage = close.usage
    if close.hold is not None:
        entry = f"SELECT amount, balance_after FROM {ledger_sql.ENTRIES} WHERE hold_id = %(hold_id)s::bigint"  # noqa: S608
    elif close.key_source == KeySource.BYOK:
        entry = f"""
            SELECT e.amount, e.balance_after FROM {ledger_sql.ENTRIES} e
            JOIN {ledger_sql.ACCOUNTS} a ON a.id = e.account_id
            WHERE a.user_id = %(user_id)s AND e.idempotency_key = %(entry_key)s AND e.hold_id IS NULL
        """  # noqa: S608 - constant identifiers; values are bound
    else:
        entry = "SELECT 0::bigint AS amount, NULL::bigint AS balance_after WHERE false"
    sql = f"""
        WITH entry AS ({entry})
        INSERT INTO {CALLS} (
            id, user_id, model, provider, kind, key_source, stream, tokens_in, tokens_out,
            tokens_cached, tokens_cache_write, tokens_reasoning, usage, surface, credits_charged,
            credits_would_cost, balance_after, latency_ms, outcome, fell_back, created_at
        ) VALUES (
            %(id)s, %(user_id)s, %(model)s, %(provider)s, %(kind)s, %(key_source)s, %(stream)s,
            %(tokens_in)s, %(tokens_out)s, %(tokens_cached)s, %(tokens_cache_write)s,
            %(tokens_reasoning)s, %(usage)s, %(surface)s,
            COALESCE((SELECT -amount FROM entry), 0), %(would_cost)s, (SELECT balance_after FROM entry),
            %(latency_ms)s, %(outcome)s, %(fell_back)s, %(now)s
        )
        ON CONFLICT (id) DO NOTHING
        RETURNING credits_charged
    """  # noqa: S608 - constant identifiers; values are bound
    params = {
        "id": close.call_id,
        "user_id": close.user_id,
        "model": close.model.id,
        "provider": str(close.model.provider),
        "kind": str(close.model.kind),
        "key_source": str(close.key_source),
        "stream": close.stream,
        "tokens_in": usage.input_tokens,
        "tokens_out": usage.output_tokens,
        "tokens_cached": usage.cached_tokens,
        "tokens_cache_write": usage.cache_write_tokens,
        "tokens_reasoning": usage.reasoning_tokens,
        "usage": Jsonb(usage.as_dict()),
        "surface": close.surface,
        "hold_id": close.hold.pk if close.hold is not None else None,
        "entry_key": f"routed:{close.call_id}",
        "would_cost": would_cost,
        "latency_ms": max(0, close.latency_ms),
        "outcome": close.outcome,
        "fell_back": close.fell_back,
        "now": now,
    }
    return Statement(sql, params)


@dataclass(frozen=True, slots=True)
class _Money:
    """A close's money statement (None: nothing moves), whether its row is a ledger entry
    (settle, usage record) rather than the voided hold, and what the usage costs."""

    statement: Statement | None
    entry: bool
    would_cost: int


def _money(close: CallClose, now: datetime) -> _Money:
    used = bool(close.usage.as_dict())
    details = _details(close.call_id, close.model)
    hold = close.hold
    if hold is not None:
        if not (close.charge and used):
            return _Money(ledger_sql.hold_void(hold_id=hold.pk, now=now), entry=False, would_cost=0)
        settlement = Settlement(
            actual_amount=None, usage=close.usage, key=f"routed:{close.call_id}:settle", extra=details
        )
        requested, params = settlement.price(hold)
        statement = ledger_sql.hold_settle(
            hold_id=hold.pk,
            requested=requested,
            resolution_key=settlement.key,
            resolution_fingerprint=params,
            entry=settlement.entry(hold, actual=requested, params=params),
            now=now,
        )
        return _Money(statement, entry=True, would_cost=requested)
    if close.key_source == KeySource.BYOK and used:
        entry = usage_record_draft(
            model=close.model.id,
            price_key=close.model.price_key,
            usage=close.usage,
            idempotency_key=f"routed:{close.call_id}",
            details=details,
        )
        statement = ledger_sql.usage_record(user_id=close.user_id, entry=entry, now=now)
        return _Money(statement, entry=True, would_cost=int(entry.pricing["would_cost"]))
    return _Money(None, entry=False, would_cost=0)


_last_use_sent: dict[tuple[int, str], float] = {}  # (user id, provider) -> monotonic time
_LAST_USE_REMEMBERED = 10_000


def _last_use_due(user_id: int, provider: str) -> bool:
    """Whether this process should stamp the key's last use now (not in the last minute)."""
    now = time.monotonic()
    sent = _last_use_sent.get((user_id, provider))
    if sent is not None and now - sent < USED_RESOLUTION_SECONDS:
        return False
    if len(_last_use_sent) >= _LAST_USE_REMEMBERED:
        _last_use_sent.clear()  # forgetting only costs a statement the guard turns into a no-op
    _last_use_sent[(user_id, provider)] = now
    return True


async def call_close(close: CallClose) -> CallReceipt:
    """Settle (or void) the hold, or record BYOK usage at zero cost, and write the routed call:
    both statements in one pipeline — one round trip, one transaction. Logs one line per call.

    A close whose connection turns out dead (PostgreSQL restarted or failed over while the call
    was at the provider) is tried once more, on a connection the pool opens anew — waiting for
    the server up to the pool's timeout — so the call is billed and answered rather than its
    hold left to the sweeper. Repeating it is safe: if the first try did commit, the second
    moves nothing (the settle or void finds its hold resolved, the usage record's key is taken,
    the routed-call row is written once). Only the fallback cap's true-up would repeat: the
    second try leaves it out (the take stays counted, as for any close that could not be
    written: never over the cap).
    If the second try fails too, the hold stays open and the sweeper releases it (nothing is
    charged), and the caller is told `503 database_unavailable`."""
    now = timezone.now()
    try:
        return await _close(close, now)
    except db.ConnectionLost:
        logger.warning("routed call %s: its close met a dead connection; trying once more", close.call_id)
        return await _close(close, now, true_up=False)


async def _close(close: CallClose, now: datetime, *, true_up: bool = True) -> CallReceipt:
    money = _money(close, now)
    log = routed_call_insert(close, would_cost=money.would_cost, now=now)
    hold_id = close.hold.pk if close.hold is not None else None
    cap_true_up = (
        fallback_true_up(user_id=close.user_id, cap_hold=close.cap_hold, hold_id=hold_id)
        if close.cap_hold and true_up
        else None
    )
    # A call on the user's key stamps its last use, at most once a minute (the statement's own
    # guard), and this process sends the statement at most once a minute per key, so a key in
    # steady use costs its calls no fourth statement.
    used = (
        provider_key_used(user_id=close.user_id, provider=close.model.provider, at=now)
        if close.key_source == KeySource.BYOK and _last_use_due(close.user_id, str(close.model.provider))
        else None
    )
    async with db.gateway_connection() as conn:
        async with conn.pipeline():
            moved = await conn.execute(money.statement.sql, money.statement.params) if money.statement else None
            logged = await conn.execute(log.sql, log.params)
            for extra in (cap_true_up, used):
                if extra is not None:
                    await conn.execute(extra.sql, extra.params)
        money_row = await moved.fetchone() if moved is not None else None
        log_row = await logged.fetchone()

    charged, balance_after = 0, None
    if money.statement is not None and money_row is None:
        logger.warning("routed call %s: its hold was resolved already, or its account is gone", close.call_id)
    if money.entry and money_row is not None:
        charged, balance_after = -money_row[AMOUNT], money_row[BALANCE_AFTER]
        credits_charged(category=money_row[CATEGORY], amount=charged)  # the pipeline has committed it
    if log_row is None:
        logger.warning("routed call %s was closed twice; the first close stands", close.call_id)

    logger.info(
        "routed call %s surface=%s model=%s key_source=%s outcome=%s credits_mc=%d would_cost_mc=%d",
        close.call_id,
        close.surface,
        close.model.id,
        close.key_source,
        close.outcome,
        charged,
        money.would_cost,
    )
    return CallReceipt(credits_charged=charged, would_cost=money.would_cost, balance_after=balance_after)


async def in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a sync service off the event loop (the rare paths), then hand its database
    connection back rather than keep one per thread."""

    def run() -> T:
        try:
            return func(*args, **kwargs)
        finally:
            for connection in connections.all(initialized_only=True):
                if not connection.in_atomic_block:
                    connection.close()

    return await sync_to_async(run, thread_sensitive=False)()
