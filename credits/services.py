"""Every write to billing accounts, credit holds and the ledger.

How each money service works:

1. Validate and price first, outside any transaction; bad input raises a 400 and writes nothing.
2. In one transaction: look for an earlier call with the same idempotency key, lock the account
   row (``select_for_update``), check, write the entry or hold, update the account, commit. The
   check and the debit happen under the same lock, so concurrent calls can't overspend, and the
   database's CHECK constraint (``balance >= reserved``) backs that up.
3. Idempotency: the same key with the same parameters returns the first result; with different
   parameters it raises ``idempotency_conflict`` (409). The earlier-call lookup runs *before*
   the lock to keep the lock short (the account row is the one hot row per user); if a twin
   call with the same key commits in between, the unique constraint stops the second insert and
   the service runs once more, which then finds and returns the twin's result.
4. On PostgreSQL the two hot writes — reserving a hold and settling one in full — take a fast
   path first: one statement each, in autocommit (`credits.ledger_sql`, which says why). It
   applies the same checks under the same row lock; anything else (a refusal, a replay, an
   overrun, a late settlement) falls through to the ORM path, which decides.

Keys live in two namespaces per account: holds, and direct ledger entries (charges, grants,
adjustments, BYOK usage records). A settlement's entry belongs to its hold.

Locks are always taken hold first, then account; nothing locks an account and then a hold, so
these services cannot deadlock with each other.

Routing's two-phase use, for a hosted LLM call::

    hold = credit_hold(user=u, model="claude-sonnet-4", input_tokens_estimate=1200, max_tokens=1024,
                       idempotency_key=f"call:{call_id}", details={"routed_call_id": call_id})
    # ... provider call, outside any transaction ...
    credit_settle(hold_id=hold.pk, usage=LlmUsage(input_tokens=..., output_tokens=..., cached_tokens=...),
                  idempotency_key=f"call:{call_id}")     # or, if the call failed:
    credit_void(hold_id=hold.pk)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_event_record
from core import errors
from credits import ledger_sql
from credits.models import (
    USAGE_CATEGORIES,
    BillingAccount,
    Category,
    CreditHold,
    HoldStatus,
    KeySource,
    LedgerEntry,
    Plan,
)
from credits.pricing import (
    MAX_UNITS,
    PRICE_BOOK_VERSION,
    LlmUsage,
    model_price,
    price_llm_call,
    price_llm_usage,
    price_llm_worst_case,
    price_units,
    unit_price,
)
from credits.selectors import billing_account_for
from niyra import rawsql

MAX_IDEMPOTENCY_KEY_LENGTH = 128
MAX_REASON_LENGTH = 255
MAX_DETAILS_BYTES = 4_096
MAX_AMOUNT = MAX_UNITS * 1_000  # 1e15 mc: far beyond any real amount, far below bigint
DEFAULT_HOLD_TTL = timedelta(minutes=15)
MAX_HOLD_TTL = timedelta(hours=24)
EXPIRE_BATCH_SIZE = 500

T = TypeVar("T")


# --- Validation (before any transaction) ---------------------------------------------------


def _invalid(field: str, message: str) -> errors.NiyraError:
    return errors.NiyraError(errors.INVALID_INPUT, detail={field: [message]})


def _idempotency_key(value: object, field: str = "idempotency_key") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise _invalid(field, f"Required: 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters.")
    return value


def _whole_amount(value: object, field: str = "amount", *, signed: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field, "A whole number of millicredits.")
    if signed and (value == 0 or abs(value) > MAX_AMOUNT):
        raise _invalid(field, f"A non-zero whole number of millicredits, at most {MAX_AMOUNT:,} either way.")
    if not signed and not 0 < value <= MAX_AMOUNT:
        raise _invalid(field, f"A positive whole number of millicredits, at most {MAX_AMOUNT:,}.")
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid("reason", "A reason is required.")
    if len(value.strip()) > MAX_REASON_LENGTH:
        raise _invalid("reason", f"At most {MAX_REASON_LENGTH} characters.")
    return value.strip()


def _details(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("details", "An object (JSON dictionary).")
    try:
        size = len(json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError):
        raise _invalid("details", "Only JSON values (strings, numbers, booleans, lists, objects).") from None
    if size > MAX_DETAILS_BYTES:
        raise _invalid("details", f"At most {MAX_DETAILS_BYTES:,} bytes of JSON.")
    return value


def _fingerprint(**params: Any) -> str:
    """What makes two calls "the same parameters" for idempotency."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _conflict(idempotency_key: str) -> errors.NiyraError:
    return errors.NiyraError(errors.IDEMPOTENCY_CONFLICT, detail={"idempotency_key": idempotency_key})


def _single_statement(write: Callable[[], T]) -> T:
    """Run a write that is one SQL statement. Outside a transaction it runs in autocommit, where
    the statement is its own transaction (no BEGIN/COMMIT round trips holding the row lock);
    inside a caller's transaction it gets a savepoint, so a failure leaves that one usable."""
    if connection.in_atomic_block:
        with transaction.atomic():
            return write()
    return write()


def _retrying_once_on_conflict(write: Callable[[], T]) -> T:
    """Run an atomic write; if a concurrent twin with the same idempotency key won the race to the
    unique constraint, run it again: the second run finds the twin's row and replays it."""
    try:
        return write()
    except IntegrityError:
        return write()


# --- Locks and the one way money moves ------------------------------------------------------


def _locked_account(user: User) -> BillingAccount:
    try:
        return BillingAccount.objects.select_for_update().get(user_id=user.pk)
    except BillingAccount.DoesNotExist:
        billing_account_for(user=user)  # first money movement for this user: create, then lock
        return BillingAccount.objects.select_for_update().get(user_id=user.pk)


def _direct_replay(user: User, idempotency_key: str, fingerprint: str) -> LedgerEntry | None:
    entry = (
        LedgerEntry.objects.filter(account__user_id=user.pk, idempotency_key=idempotency_key, hold__isnull=True)
        .order_by()
        .first()
    )
    if entry is not None and entry.fingerprint != fingerprint:
        raise _conflict(idempotency_key)
    return entry


def _entry(
    *,
    amount: int,
    category: str,
    idempotency_key: str,
    fingerprint: str,
    description: str,
    hold: CreditHold | None = None,
    model: str = "",
    units: int | None = None,
    usage: LlmUsage | None = None,
    key_source: str = "",
    details: dict[str, Any] | None = None,
    pricing: dict[str, Any] | None = None,
    flagged: bool = False,
) -> LedgerEntry:
    """An unsaved entry: everything but the account and the balance it leaves."""
    return LedgerEntry(
        amount=amount,
        category=category,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        hold=hold,
        description=description[:255],
        model=model,
        units=units,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        cached_tokens=usage.cached_tokens if usage else None,
        key_source=key_source,
        details=details or {},
        pricing={"book": PRICE_BOOK_VERSION} | (pricing or {}),
        flagged=flagged,
    )


def _post(account: BillingAccount, entry: LedgerEntry) -> LedgerEntry:
    """Append one entry and move the (locked) account's balance with it."""
    account.balance += entry.amount
    entry.account = account
    entry.balance_after = account.balance
    entry.save(force_insert=True)
    account.save(update_fields=["balance", "reserved", "updated_at"])
    return entry


def _insufficient(*, available: int, required: int) -> errors.NiyraError:
    return errors.NiyraError(errors.INSUFFICIENT_CREDITS, detail={"available": available, "required": required})


def _actor(actor: User | None) -> dict[str, Any]:
    return {"actor_id": actor.pk, "actor_email": actor.email} if actor else {"actor_id": None}


def _tokens(usage: LlmUsage) -> str:
    return f"{usage.input_tokens:,} in ({usage.cached_tokens:,} cached) / {usage.output_tokens:,} out tokens"


# --- Metered usage ---------------------------------------------------------------------------


def credit_charge(
    *,
    user: User,
    category: str,
    units: int,
    idempotency_key: str,
    details: dict[str, Any] | None = None,
) -> LedgerEntry:
    """Charge metered usage (embeddings, tool calls, voice, enrichment, telephony) from the price
    book. BYOK does not apply: these are charged whether or not the user has a key.

    Raises ``insufficient_credits`` (402) when the available balance is below the cost, and
    writes nothing. LLM calls are not charged here: they go through `credit_hold`.
    """
    if category == Category.LLM:
        raise errors.NiyraError(
            errors.UNKNOWN_CATEGORY, detail={"category": ["LLM calls are charged through holds (credit_hold)."]}
        )
    price = unit_price(category)
    cost = price_units(category, units)
    key = _idempotency_key(idempotency_key)
    context = _details(details)
    fingerprint = _fingerprint(op="charge", category=category, units=units, details=context)
    label = Category(category).label
    description = f"{label}: {units:,} {price.unit}{'' if units == 1 else 's'}"

    @transaction.atomic
    def charge() -> LedgerEntry:
        replay = _direct_replay(user, key, fingerprint)
        if replay is not None:
            return replay
        account = _locked_account(user)
        if account.available < cost:
            raise _insufficient(available=account.available, required=cost)
        return _post(
            account,
            _entry(
                amount=-cost,
                category=category,
                idempotency_key=key,
                fingerprint=fingerprint,
                description=description,
                units=units,
                details=context,
                pricing={"rate": price.as_rate()},
            ),
        )

    return _retrying_once_on_conflict(charge)


def credit_usage_record(
    *,
    user: User,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    idempotency_key: str,
    details: dict[str, Any] | None = None,
    account: BillingAccount | None = None,
) -> LedgerEntry:
    """Record an LLM call served by the user's own key (BYOK): a zero-amount ``llm`` entry with
    ``key_source=byok`` and the token volume, so the usage breakdown can count it at zero cost.
    Embeddings are always paid in credits, so an embeddings model is refused here.

    ``account``: the user's billing account if the caller has just read it (saves a read).
    """
    if account is not None and account.user_id != user.pk:
        raise _invalid("account", "Not this user's billing account.")
    price = model_price(model)
    if price.category != Category.LLM:
        raise _invalid("model", "BYOK covers LLM calls only; embeddings are charged in credits (credit_charge).")
    price_llm_call(model, input_tokens, output_tokens, cached_tokens)  # validates the counts
    usage = LlmUsage(input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens)
    key = _idempotency_key(idempotency_key)
    context = _details(details)
    fingerprint = _fingerprint(
        op="byok_usage", model=model, input=input_tokens, output=output_tokens, cached=cached_tokens, details=context
    )

    seen = account or billing_account_for(user=user)

    def record() -> LedgerEntry:
        # A zero-amount entry moves no money, so it takes no row lock on the account: BYOK
        # calls of one user don't queue behind each other (500 concurrent streams of one user
        # would otherwise serialise here). `balance_after` is the committed balance it saw.
        # One INSERT in autocommit; a replayed key hits the unique constraint and is answered
        # from the first entry.
        entry = _entry(
            amount=0,
            category=Category.LLM,
            idempotency_key=key,
            fingerprint=fingerprint,
            description=f"{model} via your own key: {_tokens(usage)}",
            model=model,
            usage=usage,
            key_source=KeySource.BYOK,
            details=context,
        )
        entry.account = seen
        entry.balance_after = seen.balance
        try:
            _single_statement(lambda: rawsql.insert(entry) if rawsql.enabled() else entry.save(force_insert=True))
        except IntegrityError:
            replay = _direct_replay(user, key, fingerprint)
            if replay is None:
                raise
            return replay
        return entry

    return _retrying_once_on_conflict(record)


# --- Support: grants and adjustments ----------------------------------------------------------


def credit_grant(
    *, user: User, amount: int, reason: str, idempotency_key: str, actor: User | None = None
) -> LedgerEntry:
    """Add credits (support grants, sign-up bonus, demo data). Audited."""
    return _support_entry(
        user=user,
        amount=_whole_amount(amount),
        reason=_reason(reason),
        idempotency_key=_idempotency_key(idempotency_key),
        actor=actor,
        category=Category.GRANT,
    )


def credit_adjust(
    *, user: User, amount: int, reason: str, idempotency_key: str, actor: User | None = None
) -> LedgerEntry:
    """Correct a balance by a signed amount (a reversing entry; the ledger is never edited).

    A negative adjustment can't take the available balance below zero: it raises
    ``insufficient_credits`` instead. Audited.
    """
    return _support_entry(
        user=user,
        amount=_whole_amount(amount, signed=True),
        reason=_reason(reason),
        idempotency_key=_idempotency_key(idempotency_key),
        actor=actor,
        category=Category.ADJUSTMENT,
    )


_SUPPORT_EVENTS: dict[str, tuple[str, str]] = {
    Category.GRANT: ("grant", "credits.granted"),
    Category.ADJUSTMENT: ("adjust", "credits.adjusted"),
}


def _support_entry(
    *, user: User, amount: int, reason: str, idempotency_key: str, actor: User | None, category: str
) -> LedgerEntry:
    """A grant or an adjustment: one entry under the account lock, and its audit row."""
    op, event = _SUPPORT_EVENTS[category]
    fingerprint = _fingerprint(op=op, amount=amount, reason=reason)

    @transaction.atomic
    def post() -> LedgerEntry:
        replay = _direct_replay(user, idempotency_key, fingerprint)
        if replay is not None:
            return replay
        account = _locked_account(user)
        if account.available + amount < 0:
            raise _insufficient(available=account.available, required=-amount)
        entry = _post(
            account,
            _entry(
                amount=amount,
                category=category,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
                description=reason,
                pricing=_actor(actor),
            ),
        )
        audit_event_record(
            actor=actor,
            subject=user,
            event=event,
            target=f"ledger_entry:{entry.pk}",
            details={"amount": amount, "reason": reason, "idempotency_key": idempotency_key},
        )
        return entry

    return _retrying_once_on_conflict(post)


# --- Holds (two-phase charging of hosted calls) ------------------------------------------------


def credit_hold(
    *,
    user: User,
    idempotency_key: str,
    amount: int | None = None,
    model: str | None = None,
    input_tokens_estimate: int | None = None,
    max_tokens: int | None = None,
    category: str | None = None,
    details: dict[str, Any] | None = None,
    expires_in: timedelta = DEFAULT_HOLD_TTL,
) -> CreditHold:
    """Reserve a worst-case amount before a hosted call; call it before talking to the provider.

    Give either ``amount`` (millicredits; ``category`` defaults to ``llm``) or ``model`` with
    ``input_tokens_estimate`` and ``max_tokens``: the hold is then the whole prompt at the
    uncached input rate plus ``max_tokens`` of output (`price_llm_worst_case`), and the category
    is the model's (``llm``, or ``embeddings`` for embedding models).

    Raises ``insufficient_credits`` (402) if ``balance - reserved`` is below the amount. Resolve
    the hold exactly once with `credit_settle` or `credit_void`; holds still open after
    ``expires_in`` are released by the ``credits.tasks.expire_holds`` beat task — so make
    ``expires_in`` longer than the call can take.
    """
    key = _idempotency_key(idempotency_key)
    context = _details(details)
    if not isinstance(expires_in, timedelta) or not timedelta(seconds=1) <= expires_in <= MAX_HOLD_TTL:
        raise _invalid("expires_in", f"Between 1 second and {MAX_HOLD_TTL}.")
    if (amount is None) == (model is None):
        raise _invalid("amount", "Give either an amount or a model with token counts, not both.")
    if model is not None:
        price = model_price(model)
        if input_tokens_estimate is None or max_tokens is None:
            raise _invalid("max_tokens", "A model hold needs input_tokens_estimate and max_tokens.")
        held = price_llm_worst_case(model, input_tokens_estimate, max_tokens)
        if held <= 0:
            raise _invalid("max_tokens", "Nothing to hold: the estimate and max_tokens are both zero.")
        if category not in (None, price.category):
            raise _invalid("category", f"{model} is charged as {price.category}.")
        hold_category = price.category
        fingerprint = _fingerprint(
            op="hold", model=model, input=input_tokens_estimate, max_tokens=max_tokens, details=context
        )
    else:
        held = _whole_amount(amount)
        hold_category = category or Category.LLM
        if hold_category not in USAGE_CATEGORIES:
            raise errors.NiyraError(errors.UNKNOWN_CATEGORY, detail={"category": [f"Not a usage category: {category}"]})
        fingerprint = _fingerprint(op="hold", amount=held, category=hold_category, details=context)

    def new_hold() -> CreditHold:
        return CreditHold(
            category=hold_category,
            amount=held,
            idempotency_key=key,
            fingerprint=fingerprint,
            model=model or "",
            input_tokens_estimate=input_tokens_estimate if model else None,
            max_tokens=max_tokens if model else None,
            details=context,
            expires_at=timezone.now() + expires_in,
        )

    @transaction.atomic
    def hold() -> CreditHold:
        replay = (
            CreditHold.objects.filter(account__user_id=user.pk, idempotency_key=key).select_related("account").first()
        )
        if replay is not None:
            if replay.fingerprint != fingerprint:
                raise _conflict(key)
            return replay
        account = _locked_account(user)
        if account.available < held:
            raise _insufficient(available=account.available, required=held)
        created = new_hold()
        created.account = account
        created.save(force_insert=True)
        account.reserved += held
        account.save(update_fields=["reserved", "updated_at"])
        return created

    if rawsql.enabled():  # the one-statement PostgreSQL paths of credits.ledger_sql
        # The common case as one statement (see credits.ledger_sql). Anything else — an earlier
        # hold with this key, too few credits, no account yet — takes the careful path above.
        fast = new_hold()
        try:
            if _single_statement(lambda: ledger_sql.hold_reserve(user_id=user.pk, hold=fast, now=timezone.now())):
                return fast
        except IntegrityError:
            pass
    return _retrying_once_on_conflict(hold)


def _hold_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid("hold_id", "A hold id (whole number).")
    return value


def _hold_not_found(hold_id: int) -> errors.NiyraError:
    return errors.NiyraError(errors.HOLD_NOT_FOUND, detail={"hold_id": hold_id})


def _already_resolved(hold: CreditHold) -> errors.NiyraError:
    return errors.NiyraError(errors.HOLD_ALREADY_RESOLVED, detail={"hold_id": hold.pk, "status": hold.status})


def _locked_hold(hold_id: int) -> CreditHold:
    hold = CreditHold.objects.select_for_update().filter(pk=hold_id).first()
    if hold is None:
        raise _hold_not_found(hold_id)
    return hold


@dataclass(frozen=True, slots=True)
class _Settlement:
    """What a settle call asks for, checked before any lock is taken."""

    actual_amount: int | None
    usage: LlmUsage | None
    key: str
    extra: dict[str, Any]

    def price(self, hold: CreditHold) -> tuple[int, str]:
        """The actual cost and the parameters' fingerprint, for this hold."""
        if self.usage is not None:
            if not hold.model:
                raise _invalid("usage", "This hold has no model to price tokens with; give actual_amount.")
            usage = self.usage
            fingerprint = _fingerprint(
                op="settle",
                input=usage.input_tokens,
                output=usage.output_tokens,
                cached=usage.cached_tokens,
                details=self.extra,
            )
            return price_llm_usage(hold.model, usage), fingerprint
        assert self.actual_amount is not None
        return self.actual_amount, _fingerprint(op="settle", amount=self.actual_amount, details=self.extra)

    def resolve(self, hold: CreditHold, *, actual: int, fingerprint: str, now: datetime) -> None:
        hold.status = HoldStatus.SETTLED
        hold.resolved_at = now
        hold.requested_amount = actual
        hold.overrun = actual > hold.amount
        hold.resolution_key = self.key
        hold.resolution_fingerprint = fingerprint

    def entry(self, hold: CreditHold, *, actual: int, charged: int, fingerprint: str, late: bool) -> LedgerEntry:
        pricing: dict[str, Any] = {"hold_amount": hold.amount, "requested": actual}
        if hold.model:
            pricing["rate"] = model_price(hold.model).as_rate()
        if late:
            pricing["late"] = True
        if charged < actual:
            pricing["uncollected"] = actual - charged
        label = hold.model or Category(hold.category).label
        return _entry(
            amount=-charged,
            category=hold.category,
            idempotency_key=hold.idempotency_key,
            fingerprint=fingerprint,
            description=f"{label}: {_tokens(self.usage)}" if self.usage else f"{label}: hold #{hold.pk} settled",
            hold=hold,
            model=hold.model,
            usage=self.usage,
            key_source=KeySource.PLATFORM if hold.category == Category.LLM else "",
            details=hold.details | self.extra,
            pricing=pricing,
            flagged=charged < actual,
        )


def credit_settle(
    *,
    hold_id: int,
    actual_amount: int | None = None,
    usage: LlmUsage | None = None,
    idempotency_key: str | None = None,
    details: dict[str, Any] | None = None,
    known_hold: CreditHold | None = None,
) -> LedgerEntry:
    """Post the actual cost of a held call and release the rest of the hold. Returns the entry.

    Give either ``actual_amount`` (millicredits) or ``usage`` (token counts, priced with the
    hold's model; use this for model holds, so the entry records the tokens). ``details`` are
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
    again (what the settlement needs of it never changes; its status is re-checked as it is
    settled).
    """
    hold_id = _hold_id(hold_id)
    if known_hold is not None and known_hold.pk != hold_id:
        raise _invalid("known_hold", "Not the hold with this hold_id.")
    if (actual_amount is None) == (usage is None):
        raise _invalid("actual_amount", "Give either actual_amount or usage, not both.")
    if usage is not None and not isinstance(usage, LlmUsage):
        raise _invalid("usage", "An LlmUsage(input_tokens, output_tokens, cached_tokens).")
    if actual_amount is not None and (
        isinstance(actual_amount, bool) or not isinstance(actual_amount, int) or not 0 <= actual_amount <= MAX_AMOUNT
    ):
        raise _invalid("actual_amount", "A whole number of millicredits, zero or more.")
    request = _Settlement(
        actual_amount=actual_amount,
        usage=usage,
        key=_idempotency_key(idempotency_key) if idempotency_key is not None else "",
        extra=_details(details),
    )

    if rawsql.enabled():  # the one-statement PostgreSQL paths of credits.ledger_sql
        # An open hold settled in full, as one statement (see credits.ledger_sql). The hold is
        # read without a lock: what the entry needs of it never changes, and the statement only
        # acts if the hold is still open. Otherwise, the careful path below.
        hold = known_hold if known_hold is not None else ledger_sql.hold_get(hold_id)
        if hold is None:
            raise _hold_not_found(hold_id)
        if hold.is_open:
            actual, fingerprint = request.price(hold)
            if actual <= hold.amount:
                now = timezone.now()
                request.resolve(hold, actual=actual, fingerprint=fingerprint, now=now)
                entry = request.entry(hold, actual=actual, charged=actual, fingerprint=fingerprint, late=False)
                if _single_statement(lambda: ledger_sql.hold_settle_in_full(hold=hold, entry=entry, now=now)):
                    return entry
    return _credit_settle_locked(hold_id=hold_id, request=request)


@transaction.atomic
def _credit_settle_locked(*, hold_id: int, request: _Settlement) -> LedgerEntry:
    hold = _locked_hold(hold_id)
    actual, fingerprint = request.price(hold)
    if hold.status in (HoldStatus.SETTLED, HoldStatus.VOIDED):
        replay = request.key and hold.status == HoldStatus.SETTLED
        if replay and (request.key, fingerprint) == (hold.resolution_key, hold.resolution_fingerprint):
            return LedgerEntry.objects.select_related("hold").get(hold=hold)
        raise _already_resolved(hold)

    late = hold.status == HoldStatus.EXPIRED
    request.resolve(hold, actual=actual, fingerprint=fingerprint, now=timezone.now())
    # Resolve the hold while only its own row is locked, to keep the account lock short.
    hold.save(
        update_fields=[
            "status",
            "resolved_at",
            "requested_amount",
            "overrun",
            "resolution_key",
            "resolution_fingerprint",
        ]
    )
    account = BillingAccount.objects.select_for_update().get(pk=hold.account_id)
    account.reserved -= 0 if late else hold.amount
    charged = min(actual, account.available)  # available now includes the released hold
    return _post(account, request.entry(hold, actual=actual, charged=charged, fingerprint=fingerprint, late=late))


@transaction.atomic
def credit_void(*, hold_id: int) -> CreditHold:
    """Release a hold without charging (the call failed: a failed call costs nothing).

    Voiding a voided or expired hold is a no-op that returns it (and stops a late settlement);
    voiding a settled hold raises ``hold_already_resolved`` (409).
    """
    hold = _locked_hold(_hold_id(hold_id))
    if hold.status == HoldStatus.SETTLED:
        raise _already_resolved(hold)
    if hold.status == HoldStatus.VOIDED:
        return hold
    was_open = hold.is_open
    hold.status = HoldStatus.VOIDED
    if was_open:
        hold.resolved_at = timezone.now()
    hold.save(update_fields=["status", "resolved_at"])
    if was_open:
        account = BillingAccount.objects.select_for_update().get(pk=hold.account_id)
        account.reserved -= hold.amount
        account.save(update_fields=["reserved", "updated_at"])
    return hold


@transaction.atomic
def _credit_hold_expire(*, hold_id: int, now: datetime) -> bool:
    # skip_locked: a hold being settled or voided right now is that call's to resolve.
    hold = (
        CreditHold.objects.select_for_update(skip_locked=True)
        .filter(pk=hold_id, status=HoldStatus.OPEN, expires_at__lt=now)
        .first()
    )
    if hold is None:
        return False
    hold.status = HoldStatus.EXPIRED
    hold.resolved_at = now
    hold.save(update_fields=["status", "resolved_at"])
    account = BillingAccount.objects.select_for_update().get(pk=hold.account_id)
    account.reserved -= hold.amount
    account.save(update_fields=["reserved", "updated_at"])
    return True


def credit_holds_expire(*, now: datetime | None = None, max_holds: int = 10 * EXPIRE_BATCH_SIZE) -> int:
    """Release every open hold past its ``expires_at`` (the beat task calls this). Returns how
    many it expired. One short transaction per hold, so the sweep never blocks live traffic."""
    now = now or timezone.now()
    expired = 0
    seen = 0
    while seen < max_holds:
        batch = list(
            CreditHold.objects.filter(status=HoldStatus.OPEN, expires_at__lt=now)
            .order_by("expires_at", "id")
            .values_list("id", flat=True)[:EXPIRE_BATCH_SIZE]
        )
        if not batch:
            break
        for hold_id in batch:
            expired += _credit_hold_expire(hold_id=hold_id, now=now)
        seen += len(batch)
        if len(batch) < EXPIRE_BATCH_SIZE:
            break
    return expired


# --- Plan and entitlements -----------------------------------------------------------------


@transaction.atomic
def billing_plan_set(*, user: User, plan: str, actor: User | None = None) -> BillingAccount:
    if plan not in Plan.values:
        raise _invalid("plan", f"One of: {', '.join(Plan.values)}.")
    account = _locked_account(user)
    previous = account.plan
    if previous != plan:
        account.plan = plan
        account.save(update_fields=["plan", "updated_at"])
        audit_event_record(
            actor=actor, subject=user, event="billing.plan_changed", details={"from": previous, "to": plan}
        )
    return account


@transaction.atomic
def billing_apex_set(*, user: User, enabled: bool, actor: User | None = None) -> BillingAccount:
    """Grant or revoke the Apex (Fable 5, alpha-gated) entitlement. Audited when it changes."""
    if not isinstance(enabled, bool):
        raise _invalid("enabled", "true or false.")
    account = _locked_account(user)
    if account.apex_enabled != enabled:
        account.apex_enabled = enabled
        account.save(update_fields=["apex_enabled", "updated_at"])
        audit_event_record(
            actor=actor, subject=user, event="billing.apex_granted" if enabled else "billing.apex_revoked"
        )
    return account
