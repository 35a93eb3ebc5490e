"""Reads for billing accounts and the ledger."""

from __future__ import annotations

from accounts.models import User
from credits.models import BillingAccount


def billing_account_for(*, user: User) -> BillingAccount:
    """The user's billing account, created (free plan, zero balance) on first use.

    Created lazily rather than by a signal: every path that needs it goes through here.
    """
    account, _ = BillingAccount.objects.get_or_create(user=user)
    return account
