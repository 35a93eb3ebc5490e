"""Every write to billing accounts and the ledger: atomic, row-locked, idempotent."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from accounts.models import User
from accounts.services import audit_event_record
from credits.models import BillingAccount, Category, LedgerEntry, Plan
from credits.selectors import billing_account_for
from niyra import errors

MAX_IDEMPOTENCY_KEY_LENGTH = 128


def _locked_account(user: User) -> BillingAccount:
    billing_account_for(user=user)  # make sure the row exists before locking it
    return BillingAccount.objects.select_for_update().get(user=user)


def _replay(account: BillingAccount, idempotency_key: str, expected: dict[str, Any]) -> LedgerEntry | None:
    entry = LedgerEntry.objects.filter(account=account, idempotency_key=idempotency_key).first()
    if entry is None:
        return None
    seen = {"amount": entry.amount, "category": entry.category}
    if seen != expected:
        raise errors.NiyraError(errors.IDEMPOTENCY_CONFLICT, detail={"idempotency_key": idempotency_key})
    return entry


@transaction.atomic
def credit_grant(
    *, user: User, amount: int, reason: str, idempotency_key: str, actor: User | None = None
) -> LedgerEntry:
    """Add credits to a user's balance (support grants, sign-up bonus, demo data)."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise errors.NiyraError(errors.INVALID_INPUT, detail={"amount": ["A positive whole number of millicredits."]})
    if not reason.strip():
        raise errors.NiyraError(errors.INVALID_INPUT, detail={"reason": ["A reason is required."]})
    if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise errors.NiyraError(errors.INVALID_INPUT, detail={"idempotency_key": ["1 to 128 characters."]})
    account = _locked_account(user)
    replayed = _replay(account, idempotency_key, {"amount": amount, "category": Category.GRANT})
    if replayed is not None:
        return replayed
    account.balance += amount
    account.save(update_fields=["balance", "updated_at"])
    try:
        with transaction.atomic():
            entry = LedgerEntry.objects.create(
                account=account,
                amount=amount,
                category=Category.GRANT,
                balance_after=account.balance,
                idempotency_key=idempotency_key,
                description=reason.strip()[:255],
                details={"actor_id": actor.pk if actor else None},
            )
    except IntegrityError:  # impossible under the row lock; kept so a bug can't double-credit
        raise errors.NiyraError(errors.IDEMPOTENCY_CONFLICT) from None
    audit_event_record(
        actor=actor, subject=user, event="credits.granted", details={"amount": amount, "reason": reason.strip()}
    )
    return entry


@transaction.atomic
def billing_plan_set(*, user: User, plan: str, actor: User | None = None) -> BillingAccount:
    if plan not in Plan.values:
        raise errors.NiyraError(errors.INVALID_INPUT, detail={"plan": [f"One of: {', '.join(Plan.values)}."]})
    account = _locked_account(user)
    previous = account.plan
    if previous != plan:
        account.plan = plan
        account.save(update_fields=["plan", "updated_at"])
        audit_event_record(
            actor=actor, subject=user, event="billing.plan_changed", details={"from": previous, "to": plan}
        )
    return account
