"""`manage.py reconcile_ledger`: clean books pass; any disagreement is printed and exits 1."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from credits.models import BillingAccount
from credits.services.holds import credit_hold
from credits.services.ledger import credit_charge

pytestmark = pytest.mark.django_db


def _reconcile() -> str:
    out = io.StringIO()
    call_command("reconcile_ledger", stdout=out)
    return out.getvalue()


def test_clean_books_pass(funded_user: Any) -> None:
    credit_charge(user=funded_user, category="tool_call", units=1, idempotency_key="t")
    credit_hold(user=funded_user, amount=500, idempotency_key="h")
    assert "no mismatches" in _reconcile()


def test_an_account_with_no_entries_is_clean(user: Any) -> None:
    BillingAccount.objects.create(user=user)
    assert "1 account(s), no mismatches" in _reconcile()


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ({"balance": 99_000}, "balance 99000 != sum of entries 100000"),
        ({"reserved": 7}, "reserved 7 != sum of open holds 500"),
    ],
)
def test_mismatches_are_printed_and_exit_1(funded_user: Any, tamper: dict[str, int], expected: str) -> None:
    credit_hold(user=funded_user, amount=500, idempotency_key="h")
    BillingAccount.objects.filter(user=funded_user).update(**tamper)  # what a bug outside the services would do
    out = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("reconcile_ledger", stdout=out)
    assert raised.value.returncode == 1
    assert expected in out.getvalue()
    assert "ada@example.com" in out.getvalue()
