"""Admin for support staff: status at a glance, no key material, disconnect through the service."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import AuditEvent, User
from accounts.support import support_group_sync
from byok.models import ProviderKey
from byok.services import provider_key_save
from sandbox import anthropic_key, openai_key

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/byok/providerkey/"


@pytest.fixture
def admin_client(db: None) -> Client:
    admin = User.objects.create_superuser(email="support@niyra.ai", password="x")
    client = Client()
    client.force_login(admin)
    return client


@pytest.fixture
def stored(pro_user: Any) -> ProviderKey:
    provider_key_save(user=pro_user, provider="openai", key=openai_key("ratelimit"))
    return provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key())


def test_changelist_shows_status_without_key_material(admin_client: Client, stored: ProviderKey) -> None:
    page = admin_client.get(CHANGELIST, {"q": "pro@example"}).content.decode()
    assert "pro@example.com" in page and stored.hint in page
    assert "rate limited" in page and "rate_limited" in page  # status, and the last error code
    assert "column-ciphertext" not in page


def test_change_page_is_read_only_and_has_no_ciphertext(admin_client: Client, stored: ProviderKey) -> None:
    page = admin_client.get(f"{CHANGELIST}{stored.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert stored.hint in html and stored.fingerprint in html
    assert "field-ciphertext" not in html and ">Ciphertext" not in html and 'name="_save"' not in html
    assert str(bytes(stored.ciphertext)) not in html and bytes(stored.ciphertext).hex() not in html


def test_no_add_and_no_raw_delete(admin_client: Client, stored: ProviderKey) -> None:
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{stored.pk}/delete/").status_code == 403
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()


def test_disconnect_action_goes_through_the_service_and_is_audited(
    admin_client: Client, stored: ProviderKey, pro_user: Any
) -> None:
    response = admin_client.post(CHANGELIST, {"action": "disconnect", "_selected_action": [stored.pk]}, follow=True)
    assert response.status_code == 200
    assert "Disconnected 1 key(s)." in response.content.decode()
    assert not ProviderKey.objects.filter(pk=stored.pk).exists()
    assert ProviderKey.objects.filter(user=pro_user, provider="openai").exists()
    event = AuditEvent.objects.get(event="provider_key.disconnected")
    assert (event.actor.email, event.subject, event.target) == ("support@niyra.ai", pro_user, "anthropic")


def test_staff_without_the_permission_cannot_disconnect(stored: ProviderKey) -> None:
    staff = User.objects.create_user(email="viewer@niyra.ai", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_providerkey"))
    client = Client()
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 200
    client.post(CHANGELIST, {"action": "disconnect", "_selected_action": [stored.pk]})
    assert ProviderKey.objects.filter(pk=stored.pk).exists()


def test_audit_rows_are_searchable_and_read_only(admin_client: Client, stored: ProviderKey) -> None:
    page = admin_client.get("/admin/accounts/auditevent/", {"q": "pro@example.com"}).content.decode()
    assert "provider_key.added" in page
    event = AuditEvent.objects.filter(event="provider_key.added").first()
    assert event is not None
    html = admin_client.get(f"/admin/accounts/auditevent/{event.pk}/change/").content.decode()
    assert stored.hint in html and 'name="_save"' not in html


def test_support_sees_the_keys_health_and_history_read_only(stored: ProviderKey) -> None:
    staff = User.objects.create_user(email="helpdesk@niyra.ai", password="x", is_staff=True)
    staff.groups.add(support_group_sync())
    client = Client()
    client.force_login(staff)

    html = client.get(f"{CHANGELIST}{stored.pk}/change/").content.decode()

    assert "Recent checks" in html and "Saved" in html  # the save's check, in the inline
    for label in ("Last used at", "Last checked at", "Next check at", "Rate limited until", "Status changes"):
        assert label in html, label
    assert 'name="checks-0-source"' not in html and 'name="checks-0-DELETE"' not in html  # nothing to edit
