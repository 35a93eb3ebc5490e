"""Holds: two-phase charging of hosted calls (reserve, then settle or void; the sweeper expires).

Routing's use, for a hosted LLM call::

    hold = credit_hold(user=u, model="claude-sonnet-4-6", price_key="claude-sonnet-4",
                       worst=Usage(input_tokens=1200, output_tokens=1024), idempotency_key=f"call:{call_id}",
                       details={"routed_call_id": call_id})
    # ... provider call, outside any transaction ...
    credit_settle(hold_id=hold.pk, usage=Usage(input_tokens=..., output_tokens=..., cached_tokens=...),
                  idempotency_key=f"call:{call_id}")     # or, if the call failed:
    credit_void(hold_id=hold.pk)

A hold's idempotency key is unique per account among holds; its settlement's entry carries the
hold's key and is unique per hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError
from django.utils import timezone

from accounts.models import User
from core import errors
from credits import ledger_sql
from credits.metrics import entry_charged_on_commit
from credits.models import USAGE_CATEGORIES, Category, CreditHold, HoldStatus, KeySource, LedgerEntry
from credits.pricing import Usage, model_price, price_usage, usage_check
from credits.services.common import (
    MAX_AMOUNT,
    MAX_ATTEMPTS,
    checked_amount,
    checked_details,
    checked_idempotency_key,
    checked_model,
    entry_draft,
    fingerprint,
    insufficient_credits,
    invalid,
    replay_of,
    statement_fetch,
    usage_text,
)

DEFAULT_HOLD_TTL = timedelta(minutes=15)
MAX_HOLD_TTL = timedelta(hours=24)
DEFAULT_MAX_EXPIRED = 5_000


def credit_hold(
    *,
    user: User,
    idempotency_key: str,
    amount: int | None = None,
    model: str | None = None,
    price_key: str | None = None,
    worst: Usage | None = None,
    category: str | None = None,
    details: dict[str, Any] | None = None,
    expires_in: timedelta = DEFAULT_HOLD_TTL,
) -> CreditHold:
    """Reserve a worst-case amount before a hosted call; call it before talking to the provider.

    Give either ``amount`` (millicredits; ``category`` defaults to ``llm``) or ``model`` with
    ``worst``, the most the call can use (a `Usage`, priced like any usage: state the worst case
    as uncached input and plain output, the dearest kinds a call is billed at). The category is
    then the model's price category (``llm``, ``embeddings``, ``voice_tts``, ``voice_stt``).
    ``model`` is the model called, which the settlement's entry shows; ``price_key`` the price
    book's key it is priced by (default: ``model`` itself, when that is a price key).

    Raises ``insufficient_credits`` (402) if ``balance - reserved`` is below the amount. Resolve
    the hold exactly once with `credit_settle` or `credit_void`; holds still open after
    ``expires_in`` are released by the ``credits.tasks.expire_holds`` beat task — so make
    ``expires_in`` longer than the call can take.
    """
    if (amount is None) == (model is None):
        raise invalid("amount", "Give either an amount or a model with its worst-case usage, not both.")
    now = timezone.now()
    draft = hold_draft(
        idempotency_key=idempotency_key,
        amount=amount,
        model=model,
        price_key=price_key,
        worst=worst,
        category=category,
        details=details,
        expires_in=expires_in,
        now=now,
    )
    return hold_place(user=user, draft=draft)


def hold_place(*, user: User, draft: CreditHold) -> CreditHold:
    """Reserve a drafted hold (`hold_draft`) — or return the earlier hold with its key — or raise
    why not (``insufficient_credits``, ``idempotency_conflict``). The gateway runs the reserve
    statement on its own pool and calls this only to explain a refusal."""
    held, now = draft.amount, timezone.now()
    available = 0
    for _ in range(MAX_ATTEMPTS):
        try:
            reserved = statement_fetch(ledger_sql.hold_reserve(user_id=user.pk, hold=draft, now=now))
        except IntegrityError:  # the key is taken: a replay, a conflict, or a twin that just won
            if (replay := _replay(user, draft)) is None:
                raise
            return replay
        if reserved is not None:
            return ledger_sql.hold_from_row(reserved)
        # Refused: say why.
        if (replay := _replay(user, draft)) is not None:
            return replay
        account = ledger_sql.account_from_row(statement_fetch(ledger_sql.account_get(user_id=user.pk)))
        available = account.available if account is not None else 0
        if available < held:
            break
        now = timezone.now()  # enough now: credits arrived after the statement looked
    raise insufficient_credits(available=available, required=held)


def hold_draft(
    *,
    idempotency_key: str,
    amount: int | None = None,
    model: str | None = None,
    price_key: str | None = None,
    worst: Usage | None = None,
    category: str | None = None,
    details: dict[str, Any] | None = None,
    expires_in: timedelta = DEFAULT_HOLD_TTL,
    now: datetime,
) -> CreditHold:
    """The hold `credit_hold` reserves, checked and priced but unsaved: the one place a hold is
    built, so the gateway can run its statement on an async connection and get the same row.

    ``amount`` with ``model``: the caller priced ``worst`` itself (with `credits.pricing`), and
    ``worst`` is then informative; without ``amount``, ``worst`` is priced here.
    """
    key = checked_idempotency_key(idempotency_key)
    context = checked_details(details)
    if not isinstance(expires_in, timedelta) or not timedelta(seconds=1) <= expires_in <= MAX_HOLD_TTL:
        raise invalid("expires_in", f"Between 1 second and {MAX_HOLD_TTL}.")
    if amount is None and model is None:
        raise invalid("amount", "Give an amount, or a model with its worst-case usage.")
    called, priced_as = "", ""
    if model is not None:
        called, priced_as = checked_model(model, price_key)
        price = model_price(priced_as)
        if not isinstance(worst, Usage):
            raise invalid("worst", "A model hold needs its worst-case usage (a credits.pricing.Usage).")
        if amount is not None:
            usage_check(worst)
            held = checked_amount(amount)
        else:
            held = price_usage(priced_as, worst)
            if held <= 0:
                raise invalid("worst", "Nothing to hold: the worst case costs nothing.")
        if category not in (None, price.category):
            raise invalid("category", f"{model} is charged as {price.category}.")
        hold_category = price.category
        priced = {"amount": held} if amount is not None else {}
        params = fingerprint(
            op="hold",
            model=called,
            price_key=priced_as,
            worst=worst.as_dict(),
            details=context,
            **priced,
        )
    else:
        if price_key is not None or worst is not None:
            field = "price_key" if price_key is not None else "worst"
            raise invalid(field, "Only a model hold has a price key and a worst case.")
        held = checked_amount(amount)
        hold_category = category or Category.LLM
        if hold_category not in USAGE_CATEGORIES:
            raise errors.NiyraError(errors.UNKNOWN_CATEGORY, detail={"category": [f"Not a usage category: {category}"]})
        params = fingerprint(op="hold", amount=held, category=hold_category, details=context)
    return CreditHold(
        category=hold_category,
        amount=held,
        idempotency_key=key,
        fingerprint=params,
        model=called,
        price_key=priced_as,
        input_tokens_estimate=worst.input_tokens if worst is not None else None,
        max_tokens=worst.output_tokens if worst is not None else None,
        details=context,
        expires_at=now + expires_in,
    )


def _replay(user: User, draft: CreditHold) -> CreditHold | None:
    """The earlier hold with this key (`replay_of`)."""
    earlier = statement_fetch(ledger_sql.hold_by_key(user_id=user.pk, idempotency_key=draft.idempotency_key))
    return replay_of(ledger_sql.hold_from_row(earlier), draft)


def _hold_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("hold_id", "A hold id (whole number).")
    return value


def _hold_read(hold_id: int) -> CreditHold:
    hold = ledger_sql.hold_from_row(statement_fetch(ledger_sql.hold_get(hold_id=hold_id)))
    if hold is None:
        raise errors.NiyraError(errors.HOLD_NOT_FOUND, detail={"hold_id": hold_id})
    return hold


def _already_resolved(hold: CreditHold) -> errors.NiyraError:
    return errors.NiyraError(errors.HOLD_ALREADY_RESOLVED, detail={"hold_id": hold.pk, "status": hold.status})


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a settle call asks for, checked before any statement: an amount, or usage."""

    actual_amount: int | None
    usage: Usage | None
    key: str
    extra: dict[str, Any]

    def price(self, hold: CreditHold) -> tuple[int, str]:
        """The actual cost and the parameters' fingerprint, for this hold."""
        if self.usage is None:
            actual = self.actual_amount or 0
            return actual, fingerprint(op="settle", amount=actual, details=self.extra)
        if not hold.price_key:
            raise invalid("usage", "This hold has no model to price usage with; give actual_amount.")
        actual = price_usage(hold.price_key, self.usage)
        return actual, fingerprint(op="settle", usage=self.usage.as_dict(), details=self.extra)

    def entry(self, hold: CreditHold, *, actual: int, params: str) -> LedgerEntry:
        """What the settlement's entry says; its statement adds what it charged and how."""
        pricing: dict[str, Any] = {"hold_amount": hold.amount, "requested": actual}
        if hold.price_key:
            pricing["rate"] = model_price(hold.price_key).as_rate()
        label = hold.model or Category(hold.category).label
        return entry_draft(
            amount=-actual,
            category=hold.category,
            idempotency_key=hold.idempotency_key,
            fingerprint=params,
            description=f"{label}: {usage_text(self.usage)}" if self.usage else f"{label}: hold #{hold.pk} settled",
            model=hold.model,
            price_key=hold.price_key,
            usage=self.usage,
            key_source=KeySource.PLATFORM if hold.category == Category.LLM else "",
            details=hold.details | self.extra,
            pricing=pricing,
        )


def credit_settle(
    *,
    hold_id: int,
    actual_amount: int | None = None,
    usage: Usage | None = None,
    idempotency_key: str | None = None,
    details: dict[str, Any] | None = None,
    known_hold: CreditHold | None = None,
) -> LedgerEntry:
    """Post the actual cost of a held call and release the rest of the hold. Returns the entry.

    Give either ``actual_amount`` (millicredits) or ``usage`` (every kind the provider
    reported, priced with the hold's price key; use this for model holds, so the entry records
    the usage: its token columns, and the whole breakdown in ``details["usage"]``). ``details`` are
    added to the hold's details on the entry (e.g. the provider's request id).

    * Actual ≤ held: charged in full; the remainder is released.
    * Actual > held (the estimate was wrong): charged only up to what the account has available
      (the hold plus the free balance), never below zero; the hold is marked ``overrun`` and
      the entry ``flagged`` if anything was left uncollected.
    * A hold resolves exactly once: settling a voided hold, or a settled one again, raises
      ``hold_already_resolved`` (409) — unless this is a replay: the same ``idempotency_key``
      and the same amount returns the first entry.
    * Late settlement: if the sweeper already expired the hold (the call outlived
      ``expires_in``), the call still happened, so it is settled once against the free balance
      (flagged ``late`` in the entry's pricing, and ``flagged`` if not fully collected).

    ``known_hold``: the hold as `credit_hold` returned it to this caller, which saves reading it
    again (what the settlement needs of it never changes; its status is checked as it is
    settled).
    """
    hold_id = _hold_id(hold_id)
    if known_hold is not None and known_hold.pk != hold_id:
        raise invalid("known_hold", "Not the hold with this hold_id.")
    if (actual_amount is None) == (usage is None):
        raise invalid("actual_amount", "Give either actual_amount or usage, not both.")
    if usage is not None and not isinstance(usage, Usage):
        raise invalid("usage", "A credits.pricing.Usage.")
    if actual_amount is not None and (
        isinstance(actual_amount, bool) or not isinstance(actual_amount, int) or not 0 <= actual_amount <= MAX_AMOUNT
    ):
        raise invalid("actual_amount", "A whole number of millicredits, zero or more.")
    request = Settlement(
        actual_amount=actual_amount,
        usage=usage,
        key=checked_idempotency_key(idempotency_key) if idempotency_key is not None else "",
        extra=checked_details(details),
    )

    hold = known_hold if known_hold is not None else _hold_read(hold_id)
    actual, params = request.price(hold)
    statement = ledger_sql.hold_settle(
        hold_id=hold_id,
        requested=actual,
        resolution_key=request.key,
        resolution_fingerprint=params,
        entry=request.entry(hold, actual=actual, params=params),
        now=timezone.now(),
    )
    settled = statement_fetch(statement)
    if settled is not None:
        posted = ledger_sql.entry_from_row(settled)
        entry_charged_on_commit(posted)
        return posted
    # Refused: the hold was settled or voided already. A replay returns the first entry.
    current = _hold_read(hold_id)
    if (
        current.status == HoldStatus.SETTLED
        and request.key
        and (request.key, params) == (current.resolution_key, current.resolution_fingerprint)
    ):
        entry = ledger_sql.entry_from_row(statement_fetch(ledger_sql.entry_of_hold(hold_id=hold_id)))
        if entry is not None:
            return entry
    raise _already_resolved(current)


def credit_void(*, hold_id: int) -> CreditHold:
    """Release a hold without charging (the call failed: a failed call costs nothing).

    Voiding a voided or expired hold is a no-op that returns it (and stops a late settlement);
    voiding a settled hold raises ``hold_already_resolved`` (409).
    """
    hold_id = _hold_id(hold_id)
    voided = statement_fetch(ledger_sql.hold_void(hold_id=hold_id, now=timezone.now()))
    if voided is not None:
        return ledger_sql.hold_from_row(voided)
    current = _hold_read(hold_id)
    if current.status == HoldStatus.VOIDED:
        return current
    raise _already_resolved(current)


def credit_holds_expire(*, now: datetime | None = None, max_holds: int = DEFAULT_MAX_EXPIRED) -> int:
    """Release every open hold past its ``expires_at`` (the beat task calls this), at most
    ``max_holds`` per run. Returns how many it expired. One statement per hold, each its own
    short transaction, so the sweep never holds up live traffic."""
    now = now or timezone.now()
    expired = 0
    while expired < max_holds and statement_fetch(ledger_sql.hold_expire_next(now=now)) is not None:
        expired += 1
    return expired
