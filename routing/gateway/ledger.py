"""A routed call's money, on the gateway's async pool: the hold before the provider, and the
close after it — settle, void or BYOK usage record, with the routed-call row — in one round trip.

The statements are `credits.ledger_sql`'s, built from the drafts the credits services build
(`hold_draft`, `Settlement`, `usage_record_draft`), so the hot path runs exactly what the sync
services run, with no thread hop. Only the rare paths hop to the services: a hold refused (to
say why — too few credits — or to find the replay), a key its provider rejected (marked
invalid, audited).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone
from psycopg.types.json import Jsonb

from accounts.models import User
from byok.services import provider_key_mark_invalid
from core import errors
from core.errors import NiyraError
from credits import ledger_sql
from credits.ledger_sql import Statement
from credits.models import CreditHold, KeySource
from credits.pricing import Usage
from credits.services.holds import Settlement, hold_draft, hold_place
from credits.services.ledger import usage_record_draft
from routing.catalog import CatalogModel
from routing.gateway import db
from routing.gateway.auth import Caller
from routing.models import RoutedCall

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CALLS = RoutedCall._meta.db_table
BALANCE_AFTER = ledger_sql.ENTRY_COLUMNS.index("balance_after")
AMOUNT = ledger_sql.ENTRY_COLUMNS.index("amount")


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
    key_rejected: bool


@dataclass(frozen=True, slots=True)
class CallReceipt:
    """Millicredits charged; what the usage costs at the book's rates (a BYOK call's saving);
    the balance after the call's entry (None when no entry was written)."""

    credits_charged: int
    would_cost: int
    balance_after: int | None


def _details(call_id: uuid.UUID, model: CatalogModel) -> dict[str, Any]:
    return {"routed_call": str(call_id), "model": model.id}


async def hold_open(*, caller: Caller, call_id: uuid.UUID, model: CatalogModel, worst: Usage) -> CreditHold:
    """Reserve the call's worst case (priced with the model's price key) in one statement, or
    raise the exact refusal (``insufficient_credits`` with what is available and required)."""
    now = timezone.now()
    draft = hold_draft(
        idempotency_key=f"routed:{call_id}",
        model=model.id,
        price_key=model.price_key,
        worst=worst,
        details=_details(call_id, model),
        expires_in=hold_ttl(),
        now=now,
    )
    try:
        row = await db.fetch_one(ledger_sql.hold_reserve(user_id=caller.user_id, hold=draft, now=now))
    except psycopg.IntegrityError:  # the key is taken: the service finds the replay or the conflict
        row = None
    if row is not None:
        return ledger_sql.hold_from_row(row)
    return await _in_thread(_hold_explained, user_id=caller.user_id, draft=draft)


def _hold_explained(*, user_id: int, draft: CreditHold) -> CreditHold:
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise NiyraError(errors.AUTHENTICATION_FAILED)
    return hold_place(user=user, draft=draft)


def routed_call_insert(close: CallClose, *, would_cost: int, now: datetime) -> Statement:
    """The routed-call row. What the call was charged is read from its settlement's entry (in
    the same round trip, after the settle): only the settle statement knows what it collected.
    A second close of the same call writes nothing (no row)."""
    usage = close.usage
    sql = f"""
        INSERT INTO {CALLS} (
            id, user_id, model, provider, kind, key_source, stream, tokens_in, tokens_out,
            tokens_cached, tokens_cache_write, tokens_reasoning, usage, surface, credits_charged,
            credits_would_cost, latency_ms, outcome, fell_back, created_at
        ) VALUES (
            %(id)s, %(user_id)s, %(model)s, %(provider)s, %(kind)s, %(key_source)s, %(stream)s,
            %(tokens_in)s, %(tokens_out)s, %(tokens_cached)s, %(tokens_cache_write)s,
            %(tokens_reasoning)s, %(usage)s, %(surface)s,
            COALESCE((SELECT -amount FROM {ledger_sql.ENTRIES} WHERE hold_id = %(hold_id)s::bigint), 0),
            %(would_cost)s, %(latency_ms)s, %(outcome)s, %(fell_back)s, %(now)s
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


async def call_close(close: CallClose) -> CallReceipt:
    """Settle (or void) the hold, or record BYOK usage at zero cost, and write the routed call:
    both statements in one pipeline — one round trip, one transaction. Logs one line per call."""
    now = timezone.now()
    money = _money(close, now)
    log = routed_call_insert(close, would_cost=money.would_cost, now=now)
    async with db.gateway_connection() as conn:
        async with conn.pipeline():
            moved = await conn.execute(money.statement.sql, money.statement.params) if money.statement else None
            logged = await conn.execute(log.sql, log.params)
        money_row = await moved.fetchone() if moved is not None else None
        log_row = await logged.fetchone()

    charged, balance_after = 0, None
    if money.statement is not None and money_row is None:
        logger.warning("routed call %s: its hold was resolved already, or its account is gone", close.call_id)
    if money.entry and money_row is not None:
        charged, balance_after = -money_row[AMOUNT], money_row[BALANCE_AFTER]
    if log_row is None:
        logger.warning("routed call %s was closed twice; the first close stands", close.call_id)

    if close.key_rejected and close.key_source == KeySource.BYOK:
        await _in_thread(_key_rejected, user_id=close.user_id, provider=close.model.provider, close=close)
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


def _key_rejected(*, user_id: int, provider: str, close: CallClose) -> None:
    user = User.objects.filter(pk=user_id).first()
    if user is not None:
        provider_key_mark_invalid(user=user, provider=provider, fingerprint=close.key_fingerprint)


async def _in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
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
