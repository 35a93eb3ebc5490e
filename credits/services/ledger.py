"""Direct ledger entries: metered charges, BYOK usage records, support grants and adjustments.

Direct entries have their own idempotency keys, unique per account (a settlement's entry
belongs to its hold instead: `credits.services.holds`).
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_event_record
from core import errors
from credits import ledger_sql
from credits.metrics import entry_charged_on_commit
from credits.models import Category, KeySource, LedgerEntry
from credits.pricing import Usage, model_price, price_units, price_usage, unit_price
from credits.services.accounts import billing_account_ensure
from credits.services.common import (
    MAX_ATTEMPTS,
    checked_amount,
    checked_details,
    checked_idempotency_key,
    checked_model,
    checked_reason,
    entry_draft,
    fingerprint,
    insufficient_credits,
    invalid,
    replay_of,
    statement_fetch,
    usage_text,
)


def _replay(user: User, entry: LedgerEntry) -> LedgerEntry | None:
    """The earlier direct entry with this key (`replay_of`)."""
    earlier = statement_fetch(ledger_sql.entry_by_key(user_id=user.pk, idempotency_key=entry.idempotency_key))
    return replay_of(ledger_sql.entry_from_row(earlier), entry)


def _post(user: User, entry: LedgerEntry) -> tuple[LedgerEntry, bool]:
    """Post a direct entry that moves the balance by ``entry.amount`` (`ledger_sql.entry_post`).

    Returns the entry and whether it is new (False: a replay of the first one). The user's
    first credit creates their account. Too few credits: ``insufficient_credits``.
    """
    available = 0
    for _ in range(MAX_ATTEMPTS):
        try:
            posted = statement_fetch(ledger_sql.entry_post(user_id=user.pk, entry=entry, now=timezone.now()))
        except IntegrityError:  # the key is taken: a replay, a conflict, or a twin that just won
            if (replay := _replay(user, entry)) is None:
                raise
            return replay, False
        if posted is not None:
            return ledger_sql.entry_from_row(posted), True
        # Refused: say why.
        if (replay := _replay(user, entry)) is not None:
            return replay, False
        account = ledger_sql.account_from_row(statement_fetch(ledger_sql.account_get(user_id=user.pk)))
        if account is None and entry.amount >= 0:
            billing_account_ensure(user=user)  # the user's first credit
            continue
        available = account.available if account is not None else 0
        if available + entry.amount < 0:
            raise insufficient_credits(available=available, required=-entry.amount)
        # Enough now: credits arrived after the statement looked. Run it again.
    raise insufficient_credits(available=available, required=-entry.amount)


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
    key = checked_idempotency_key(idempotency_key)
    context = checked_details(details)
    label = Category(category).label
    entry = entry_draft(
        amount=-cost,
        category=category,
        idempotency_key=key,
        fingerprint=fingerprint(op="charge", category=category, units=units, details=context),
        description=f"{label}: {units:,} {price.unit}{'' if units == 1 else 's'}",
        units=units,
        details=context,
        pricing={"rate": price.as_rate()},
    )
    posted, created = _post(user, entry)
    if created:  # a replay was counted when it was first posted
        entry_charged_on_commit(posted)
    return posted


def credit_usage_record(
    *,
    user: User,
    model: str,
    price_key: str | None = None,
    usage: Usage,
    idempotency_key: str,
    details: dict[str, Any] | None = None,
) -> LedgerEntry:
    """Record an LLM call served by the user's own key (BYOK): a zero-amount ``llm`` entry with
    ``key_source=byok``, the usage (token columns, and every kind in ``details["usage"]``) and,
    in ``pricing``, what it would have cost in credits (``would_cost``, at the ``rate`` row), so
    the usage breakdown can count it at zero cost and show what the key saved.
    ``model`` is the model called; ``price_key`` the price book's key for it (default: ``model``
    itself). Embeddings and voice are always paid in credits, so their models are refused here.
    """
    entry = usage_record_draft(
        model=model, price_key=price_key, usage=usage, idempotency_key=idempotency_key, details=details
    )
    for _ in range(2):
        try:
            recorded = statement_fetch(ledger_sql.usage_record(user_id=user.pk, entry=entry, now=timezone.now()))
        except IntegrityError:
            if (replay := _replay(user, entry)) is None:
                raise
            return replay
        if recorded is not None:
            return ledger_sql.entry_from_row(recorded)
        billing_account_ensure(user=user)  # the user's first call: no account yet
    raise errors.NiyraError(errors.INTERNAL_ERROR)  # the account was deleted meanwhile


def usage_record_draft(
    *,
    model: str,
    price_key: str | None = None,
    usage: Usage,
    idempotency_key: str,
    details: dict[str, Any] | None = None,
) -> LedgerEntry:
    """The entry `credit_usage_record` posts, checked and priced but unsaved: the one place it
    is built, so the gateway can run `ledger_sql.usage_record` on its own connection."""
    model, price_key = checked_model(model, price_key)
    price = model_price(price_key)
    if price.category != Category.LLM:
        raise invalid("model", "BYOK covers LLM calls only; embeddings and voice are charged in credits.")
    would_cost = price_usage(price_key, usage)  # also checks the counts
    context = checked_details(details)
    return entry_draft(
        amount=0,
        category=Category.LLM,
        idempotency_key=checked_idempotency_key(idempotency_key),
        fingerprint=fingerprint(
            op="byok_usage", model=model, price_key=price_key, usage=usage.as_dict(), details=context
        ),
        description=f"{model} via your own key: {usage_text(usage)}",
        model=model,
        price_key=price_key,
        usage=usage,
        key_source=KeySource.BYOK,
        details=context,
        pricing={"rate": price.as_rate(), "would_cost": would_cost},
    )


# --- Support: grants and adjustments ----------------------------------------------------------


def credit_grant(
    *, user: User, amount: int, reason: str, idempotency_key: str, actor: User | None = None
) -> LedgerEntry:
    """Add credits (support grants, sign-up bonus, demo data). Audited."""
    return _support_entry(
        user=user,
        amount=checked_amount(amount),
        reason=checked_reason(reason),
        idempotency_key=checked_idempotency_key(idempotency_key),
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
        amount=checked_amount(amount, signed=True),
        reason=checked_reason(reason),
        idempotency_key=checked_idempotency_key(idempotency_key),
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
    """A grant or an adjustment, and its audit row, in one transaction (a replay: no new row)."""
    op, event = _SUPPORT_EVENTS[category]
    actor_pricing: dict[str, Any] = {"actor_id": actor.pk, "actor_email": actor.email} if actor else {"actor_id": None}
    draft = entry_draft(
        amount=amount,
        category=category,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint(op=op, amount=amount, reason=reason),
        description=reason,
        pricing=actor_pricing,
    )
    with transaction.atomic():
        entry, created = _post(user, draft)
        if created:
            audit_event_record(
                actor=actor,
                subject=user,
                event=event,
                target=f"ledger_entry:{entry.pk}",
                details={"amount": amount, "reason": reason, "idempotency_key": idempotency_key},
            )
    return entry
