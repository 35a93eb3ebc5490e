"""Admin: support staff with just the right permissions grant, adjust, change plan and Apex
through the services; the ledger and holds are read-only."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import AuditEvent
from credits.models import BillingAccount, LedgerEntry
from credits.services.holds import credit_hold
from tests.credits.conftest import CREDIT

pytestmark = pytest.mark.django_db

ACCOUNTS = "/admin/credits/billingaccount/"


def _staff_client(make_user: Any, *codenames: str) -> tuple[Client, Any]:
    staff = make_user("support@niyra.ai", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="credits", codename__in=codenames))
    client = Client()
    client.force_login(staff)
    return client, staff


def _action(client: Client, action: str, account: BillingAccount, **form: Any) -> Any:
    return client.post(ACCOUNTS, {"action": action, "_selected_action": [account.pk], **form})


def test_accounts_are_searchable_by_email(make_user: Any, funded_user: Any) -> None:
    client, _ = _staff_client(make_user, "view_billingaccount")
    make_user("someone-else@example.com")
    BillingAccount.objects.get_or_create(user=make_user("grace@example.com"))
    response = client.get(ACCOUNTS, {"q": "ada@"})
    assert response.status_code == 200
    assert b"ada@example.com" in response.content
    assert b"grace@example.com" not in response.content
    assert b"100.000" in response.content  # balance shown in credits


def test_grant_goes_through_a_reason_form_and_the_service(make_user: Any, funded_user: Any) -> None:
    client, staff = _staff_client(make_user, "view_billingaccount", "grant_credits")
    account = BillingAccount.objects.get(user=funded_user)
    form_page = _action(client, "grant_credits", account)
    assert form_page.status_code == 200
    assert b"reason" in form_page.content
    submission = form_page.context["form"].initial["submission"]

    missing_reason = _action(client, "grant_credits", account, apply="1", submission=submission, amount="5", reason="")
    assert missing_reason.status_code == 200  # the form again, with the error
    assert LedgerEntry.objects.count() == 1

    form = {"apply": "1", "submission": submission, "amount": "12.5", "reason": "Outage on 1 Dec"}
    assert _action(client, "grant_credits", account, **form).status_code == 302
    assert _action(client, "grant_credits", account, **form).status_code == 302  # double submit
    grant = LedgerEntry.objects.get(category="grant", description="Outage on 1 Dec")
    assert grant.amount == 12_500
    assert grant.pricing["actor_id"] == staff.pk
    assert AuditEvent.objects.filter(event="credits.granted", actor=staff, subject=funded_user).count() == 1


def test_adjust_can_take_credits_back_but_not_below_zero(make_user: Any, funded_user: Any) -> None:
    client, staff = _staff_client(make_user, "view_billingaccount", "grant_credits")
    account = BillingAccount.objects.get(user=funded_user)
    form = {"apply": "1", "submission": "s1", "amount": "-30", "reason": "Duplicate grant"}
    assert _action(client, "adjust_credits", account, **form).status_code == 302
    account.refresh_from_db()
    assert account.balance == 70 * CREDIT
    too_much = {"apply": "1", "submission": "s2", "amount": "-71", "reason": "Oops"}
    response = _action(client, "adjust_credits", account, **too_much)
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.balance == 70 * CREDIT
    assert AuditEvent.objects.filter(event="credits.adjusted", actor=staff).count() == 1


def test_staff_without_the_permission_cannot_grant_and_nothing_changes(make_user: Any, funded_user: Any) -> None:
    client, _ = _staff_client(make_user, "view_billingaccount")
    account = BillingAccount.objects.get(user=funded_user)
    form = {"apply": "1", "submission": "s1", "amount": "1000", "reason": "please"}
    response = _action(client, "grant_credits", account, **form)
    assert response.status_code in (200, 302)
    assert LedgerEntry.objects.count() == 1
    assert not AuditEvent.objects.filter(event="credits.granted", actor__isnull=False).exists()
    assert b"grant_credits" not in client.get(ACCOUNTS).content  # not even offered


def test_change_plan_and_apex(make_user: Any, user: Any) -> None:
    client, staff = _staff_client(make_user, "view_billingaccount", "change_plan", "manage_apex")
    account, _ = BillingAccount.objects.get_or_create(user=user)
    assert _action(client, "change_plan", account).status_code == 200
    assert _action(client, "change_plan", account, apply="1", submission="s", plan="pro").status_code == 302
    assert _action(client, "grant_apex", account).status_code == 302
    account.refresh_from_db()
    assert (account.plan, account.apex_enabled) == ("pro", True)
    assert _action(client, "revoke_apex", account).status_code == 302
    account.refresh_from_db()
    assert not account.apex_enabled
    events = set(AuditEvent.objects.filter(actor=staff).values_list("event", flat=True))
    assert events == {"billing.plan_changed", "billing.apex_granted", "billing.apex_revoked"}


def test_account_balance_is_not_editable(make_user: Any, funded_user: Any) -> None:
    client, _ = _staff_client(make_user, "view_billingaccount", "change_billingaccount")
    account = BillingAccount.objects.get(user=funded_user)
    response = client.post(f"{ACCOUNTS}{account.pk}/change/", {"balance": 10**9, "reserved": 0, "plan": "alpha"})
    assert response.status_code == 403
    account.refresh_from_db()
    assert (account.balance, account.plan) == (100 * CREDIT, "free")


def test_ledger_and_holds_are_read_only_even_for_a_superuser(make_user: Any, funded_user: Any) -> None:
    admin_user = make_user("root@niyra.ai", is_staff=True)
    admin_user.is_superuser = True
    admin_user.save()
    client = Client()
    client.force_login(admin_user)
    hold = credit_hold(user=funded_user, amount=100, idempotency_key="h")
    entry = LedgerEntry.objects.get()
    for base, pk in (("/admin/credits/ledgerentry/", entry.pk), ("/admin/credits/credithold/", hold.pk)):
        assert client.get(base).status_code == 200
        assert client.get(f"{base}{pk}/change/").status_code == 200  # a read-only view
        assert client.get(f"{base}add/").status_code == 403
        assert client.post(f"{base}{pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get(f"{ACCOUNTS}{entry.account_id}/change/").status_code == 200
    assert LedgerEntry.objects.count() == 1


def test_ledger_csv_export(make_user: Any, funded_user: Any) -> None:
    client, _ = _staff_client(make_user, "view_ledgerentry")
    entry = LedgerEntry.objects.get()
    response = client.post("/admin/credits/ledgerentry/", {"action": "export_csv", "_selected_action": [entry.pk]})
    assert response["Content-Type"] == "text/csv"
    assert b"ada@example.com" in response.content
