"""Billing accounts: created on a user's first money movement or plan change; plan and Apex."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_event_record
from credits import ledger_sql
from credits.models import BillingAccount, Plan
from credits.services.common import invalid, statement_fetch


def billing_account_ensure(*, user: User) -> BillingAccount:
    """The user's billing account, created (free plan, nothing on it) if they have none yet.

    Reads never create one (a missing account reads as the free plan with zero balance): the
    services that move money or change the plan call this first.
    """
    created = ledger_sql.account_from_row(
        statement_fetch(ledger_sql.account_create(user_id=user.pk, now=timezone.now()))
    )
    if created is not None:
        return created
    account = ledger_sql.account_from_row(statement_fetch(ledger_sql.account_get(user_id=user.pk)))
    if account is None:  # only if the user itself is gone
        raise BillingAccount.DoesNotExist(f"No billing account for user {user.pk}.")
    return account


def _locked_account(user: User) -> BillingAccount:
    billing_account_ensure(user=user)
    return BillingAccount.objects.select_for_update().get(user_id=user.pk)


@transaction.atomic
def billing_plan_set(*, user: User, plan: str, actor: User | None = None) -> BillingAccount:
    if plan not in Plan.values:
        raise invalid("plan", f"One of: {', '.join(Plan.values)}.")
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
        raise invalid("enabled", "true or false.")
    account = _locked_account(user)
    if account.apex_enabled != enabled:
        account.apex_enabled = enabled
        account.save(update_fields=["apex_enabled", "updated_at"])
        audit_event_record(
            actor=actor, subject=user, event="billing.apex_granted" if enabled else "billing.apex_revoked"
        )
    return account
