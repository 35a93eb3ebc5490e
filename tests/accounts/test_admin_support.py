"""Support staff in the admin: a staff member in the "Support" group (no superuser) can do exactly
what support does — find a user by email, see account, keys, connections, ledger and audit on
one page, and grant/adjust credits, change plan, grant Apex, disconnect a key, refresh a
connection — through the services, and nothing else. A staff member without the group can't."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEvent, User
from accounts.services import api_token_create
from accounts.support import SUPPORT_GROUP, SUPPORT_PERMISSIONS, support_group_sync
from byok.keytext import key_fingerprint, key_hint
from byok.models import KeyStatus, ProviderKey, provider_key_purpose
from connections.models import ConnectionStatus, OAuthConnection
from core.crypto import get_keyring
from credits.models import BillingAccount, LedgerEntry
from credits.services.accounts import billing_plan_set
from credits.services.ledger import credit_grant

pytestmark = pytest.mark.django_db

KEY = "sk-ant-api03-support-page-test-0123456789abcdef"


@pytest.fixture
def customer(make_user: Callable[..., Any]) -> User:
    user: User = make_user("ada@example.com")
    billing_plan_set(user=user, plan="pro")
    credit_grant(user=user, amount=100_000, reason="welcome", idempotency_key="welcome")
    keyring = get_keyring()
    ProviderKey.objects.create(
        user=user,
        provider="anthropic",
        ciphertext=keyring.encrypt(KEY, purpose=provider_key_purpose(user_id=user.pk, provider="anthropic")),
        encryption_key_id=keyring.primary_kid,
        hint=key_hint(provider="anthropic", key=KEY),
        fingerprint=key_fingerprint(KEY),
        status=KeyStatus.VALID,
        last_tested_at=timezone.now(),
    )
    OAuthConnection.objects.create(
        user=user,
        integration="gmail",
        status=ConnectionStatus.ACTIVE,
        access_token_ciphertext=b"sealed-access-token",
        refresh_token_ciphertext=b"sealed-refresh-token",
        encryption_key_id=keyring.primary_kid,
        expires_at=timezone.now() + timezone.timedelta(hours=1),
        token_issued_at=timezone.now(),
        connected_at=timezone.now(),
    )
    return user


def _client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def support(make_user: Callable[..., Any]) -> Client:
    staff: User = make_user("support@niyra.ai", is_staff=True)
    staff.groups.add(support_group_sync())
    return _client_for(staff)


@pytest.fixture
def staff_without_group(make_user: Callable[..., Any]) -> Client:
    return _client_for(make_user("intern@niyra.ai", is_staff=True))


def _action(client: Client, url: str, action: str, pk: int, **form: Any) -> Any:
    return client.post(url, {"action": action, "_selected_action": [pk], **form})


# --- the group ----------------------------------------------------------------------------------


def test_the_group_has_exactly_the_support_permissions(db: None) -> None:
    group = support_group_sync()

    granted = {(p.content_type.app_label, p.content_type.model, p.codename) for p in group.permissions.all()}
    assert granted == set(SUPPORT_PERMISSIONS)
    assert not any(codename.startswith("add_") for _, _, codename in SUPPORT_PERMISSIONS)


def test_sync_puts_drifted_permissions_back_and_can_add_a_member(make_user: Callable[..., Any]) -> None:
    from django.contrib.auth.models import Permission

    group = support_group_sync()
    group.permissions.add(Permission.objects.get(codename="change_user"))
    member: User = make_user("new-support@niyra.ai")
    out = StringIO()

    call_command("support_group", "--add", member.email, stdout=out)

    group = Group.objects.get(name=SUPPORT_GROUP)
    assert not group.permissions.filter(codename="change_user").exists()
    member.refresh_from_db()
    assert member.is_staff and not member.is_superuser
    assert member.groups.filter(name=SUPPORT_GROUP).exists()
    assert "credits.grant_credits" in out.getvalue()
    assert AuditEvent.objects.filter(event="support.member_added", subject=member).count() == 1


def test_the_migration_created_the_group() -> None:
    """Applied to the test database by `migrate` (a transactional test elsewhere may have flushed
    it since; then this re-syncs, which is what `manage.py support_group` is for)."""
    from django.db.migrations.recorder import MigrationRecorder

    assert MigrationRecorder.Migration.objects.filter(app="accounts", name="0002_support_group").exists()


# --- what support can do ------------------------------------------------------------------------


def test_search_users_by_email(support: Client, customer: User, make_user: Callable[..., Any]) -> None:
    make_user("grace@example.com")

    response = support.get("/admin/accounts/user/", {"q": "ada@"})

    assert response.status_code == 200
    html = response.content.decode()
    assert "ada@example.com" in html and "grace@example.com" not in html
    assert "100.000" in html and "Pro" in html


def test_user_page_shows_everything_on_one_page_and_no_secrets(support: Client, customer: User) -> None:
    response = support.get(f"/admin/accounts/user/{customer.pk}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    for expected in (
        "Support overview",
        "Pro",
        "100.000",  # balance
        key_hint(provider="anthropic", key=KEY),
        "Valid",
        "gmail",
        "Active",
        "welcome",  # the ledger entry's reason
        "credits.granted",  # an audit row
        f"/admin/credits/billingaccount/?user__id__exact={customer.pk}",
        f"/admin/byok/providerkey/?user__id__exact={customer.pk}",
        f"/admin/connections/oauthconnection/?user__id__exact={customer.pk}",
        f"/admin/accounts/auditevent/?subject__id__exact={customer.pk}",
    ):
        assert expected in html, expected
    assert KEY not in html and KEY[-12:-4] not in html
    assert "sealed-access-token" not in html and "sealed-refresh-token" not in html
    assert 'name="_save"' not in html  # view only
    assert "Reset password" not in html and "algorithm" not in html  # no password hash, no reset


def test_linked_pages_open_filtered_to_the_user(support: Client, customer: User) -> None:
    account = BillingAccount.objects.get(user=customer)
    for url in (
        f"/admin/credits/billingaccount/?user__id__exact={customer.pk}",
        f"/admin/byok/providerkey/?user__id__exact={customer.pk}",
        f"/admin/connections/oauthconnection/?user__id__exact={customer.pk}",
        f"/admin/accounts/auditevent/?subject__id__exact={customer.pk}",
        f"/admin/credits/ledgerentry/?account__id__exact={account.pk}",
    ):
        response = support.get(url)
        assert response.status_code == 200, url
        assert "ada@example.com" in response.content.decode(), url
    assert support.get(f"/admin/credits/credithold/?account__id__exact={account.pk}").status_code == 200


def test_grant_with_a_reason(support: Client, customer: User) -> None:
    account = BillingAccount.objects.get(user=customer)
    url = "/admin/credits/billingaccount/"
    form = {"apply": "1", "submission": "s1", "amount": "25.5", "reason": "Outage credit"}

    assert _action(support, url, "grant_credits", account.pk, **form).status_code == 302

    account.refresh_from_db()
    assert account.balance == 125_500
    assert AuditEvent.objects.filter(event="credits.granted", actor__email="support@niyra.ai").count() == 1


def test_adjust_change_plan_and_apex(support: Client, customer: User) -> None:
    account = BillingAccount.objects.get(user=customer)
    url = "/admin/credits/billingaccount/"

    _action(support, url, "adjust_credits", account.pk, apply="1", submission="a", amount="-10", reason="Refund")
    _action(support, url, "change_plan", account.pk, apply="1", submission="p", plan="alpha")
    _action(support, url, "grant_apex", account.pk)

    account.refresh_from_db()
    assert (account.balance, account.plan, account.apex_enabled) == (90_000, "alpha", True)


def test_disconnect_a_key(support: Client, customer: User) -> None:
    key = ProviderKey.objects.get(user=customer)

    response = _action(support, "/admin/byok/providerkey/", "disconnect", key.pk)

    assert response.status_code == 302
    assert not ProviderKey.objects.filter(user=customer).exists()
    event = AuditEvent.objects.get(event="provider_key.disconnected")
    assert (event.actor.email, event.subject) == ("support@niyra.ai", customer)


def test_refresh_a_connection_now(support: Client, customer: User, django_capture_on_commit_callbacks: Any) -> None:
    connection = OAuthConnection.objects.get(user=customer)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _action(support, "/admin/connections/oauthconnection/", "refresh_now", connection.pk)

    assert response.status_code == 302
    assert len(callbacks) == 1  # the refresh task, queued once the audit row commits
    assert AuditEvent.objects.filter(event="oauth_connection.refresh_requested", subject=customer).exists()


# --- and nothing else ---------------------------------------------------------------------------


def test_support_cannot_edit_users_or_see_tokens_or_groups(support: Client, customer: User) -> None:
    api_token_create(user=customer, name="laptop")
    change = f"/admin/accounts/user/{customer.pk}/change/"

    assert support.post(change, {"email": "evil@example.com", "is_superuser": "on"}).status_code == 403
    assert support.get("/admin/accounts/user/add/").status_code == 403
    assert support.get(f"/admin/accounts/user/{customer.pk}/delete/").status_code == 403
    assert support.get(f"/admin/accounts/user/{customer.pk}/password/").status_code == 403
    assert support.get("/admin/accounts/apitoken/").status_code == 403
    assert support.get("/admin/auth/group/").status_code == 403
    customer.refresh_from_db()
    assert customer.email == "ada@example.com" and not customer.is_superuser


def test_support_cannot_edit_ledger_audit_keys_or_accounts(support: Client, customer: User) -> None:
    entry = LedgerEntry.objects.filter(account__user=customer).first()
    assert entry is not None
    audit = AuditEvent.objects.filter(subject=customer).first()
    assert audit is not None
    key = ProviderKey.objects.get(user=customer)
    account = BillingAccount.objects.get(user=customer)
    connection = OAuthConnection.objects.get(user=customer)

    for url, data in (
        (f"/admin/credits/ledgerentry/{entry.pk}/change/", {"amount": "999999"}),
        (f"/admin/accounts/auditevent/{audit.pk}/change/", {"outcome": "forged"}),
        (f"/admin/byok/providerkey/{key.pk}/change/", {"hint": "x"}),
        (f"/admin/credits/billingaccount/{account.pk}/change/", {"balance": "999999", "plan": "alpha"}),
        (f"/admin/connections/oauthconnection/{connection.pk}/change/", {"status": "error"}),
    ):
        assert support.post(url, data).status_code == 403, url
    for url in (
        f"/admin/credits/ledgerentry/{entry.pk}/delete/",
        f"/admin/accounts/auditevent/{audit.pk}/delete/",
        f"/admin/byok/providerkey/{key.pk}/delete/",
        f"/admin/connections/oauthconnection/{connection.pk}/delete/",
        "/admin/byok/providerkey/add/",
        "/admin/credits/ledgerentry/add/",
    ):
        assert support.get(url).status_code == 403, url
    key_page = support.get(f"/admin/byok/providerkey/{key.pk}/change/").content.decode()
    assert KEY not in key_page
    assert LedgerEntry.objects.get(pk=entry.pk).amount == entry.amount
    assert AuditEvent.objects.get(pk=audit.pk).outcome == audit.outcome
    account.refresh_from_db()
    assert (account.balance, account.plan) == (100_000, "pro")


def test_staff_without_the_group_can_do_nothing(staff_without_group: Client, customer: User) -> None:
    account = BillingAccount.objects.get(user=customer)
    key = ProviderKey.objects.get(user=customer)

    assert staff_without_group.get("/admin/accounts/user/", {"q": "ada"}).status_code == 403
    assert staff_without_group.get(f"/admin/accounts/user/{customer.pk}/change/").status_code == 403
    grant = {"apply": "1", "submission": "s", "amount": "5", "reason": "x"}
    assert (
        _action(staff_without_group, "/admin/credits/billingaccount/", "grant_credits", account.pk, **grant).status_code
        == 403
    )
    assert _action(staff_without_group, "/admin/byok/providerkey/", "disconnect", key.pk).status_code == 403

    account.refresh_from_db()
    assert account.balance == 100_000
    assert ProviderKey.objects.filter(pk=key.pk).exists()
    assert not AuditEvent.objects.filter(actor__email="intern@niyra.ai").exists()


def test_the_migrations_leave_no_content_type_of_a_model_that_moved(db: None) -> None:
    """A data migration that creates permissions from an older state (the Support group's) must
    not bring back a moved model's content type: its permissions would shadow the real ones
    (two `view_oauthconnection`). Meaningful on a freshly migrated database, as CI's is when
    this runs (a transactional test's flush recreates only current content types)."""
    from django.contrib.contenttypes.models import ContentType

    assert [(ct.app_label, ct.model) for ct in ContentType.objects.all() if ct.model_class() is None] == []
