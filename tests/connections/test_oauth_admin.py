"""Admin for OAuth connections: by user email, status and failures, no token material,
"refresh now" through the task (audited), nothing editable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import AuditEvent, User
from connections.models import ConnectionStatus, OAuthConnection
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import (
    Queue,
    connect,
    tokens_of,
)

# Shared fixtures (assigned, not imported, so the test functions' parameters don't shadow an import).
clock = helpers.clock
integrations = helpers.integrations
queued = helpers.queued

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/connections/oauthconnection/"


@pytest.fixture
def admin_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser(email="support@niyra.ai", password="x"))
    return client


@pytest.fixture
def stored(integrations: Callable[..., str], pro_user: Any, clock: Any) -> OAuthConnection:
    integrations("gmail")
    connection = connect(pro_user)
    OAuthConnection.objects.filter(pk=connection.pk).update(
        status=ConnectionStatus.ERROR,
        consecutive_failures=10,
        last_error_code="oauth_provider_unavailable",
        last_error_reason="http_503",
    )
    connection.refresh_from_db()
    return connection


def test_changelist_shows_email_status_and_failures(admin_client: Client, stored: OAuthConnection) -> None:
    page = admin_client.get(CHANGELIST, {"q": "pro@example"}).content.decode()
    assert "pro@example.com" in page and "gmail" in page
    assert "Error" in page and "http_503" in page and ">10<" in page
    assert "column-access_token_ciphertext" not in page


def test_change_page_is_read_only_without_tokens(admin_client: Client, stored: OAuthConnection) -> None:
    access, refresh = tokens_of(stored)
    page = admin_client.get(f"{CHANGELIST}{stored.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "http_503" in html and 'name="_save"' not in html
    assert "field-access_token_ciphertext" not in html and "field-refresh_token_ciphertext" not in html
    assert refresh is not None
    for secret in (access, refresh, bytes(stored.access_token_ciphertext).hex()):
        assert secret not in html


def test_no_add_and_no_raw_delete(admin_client: Client, stored: OAuthConnection) -> None:
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{stored.pk}/delete/").status_code == 403
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()


def test_refresh_now_queues_the_task_and_is_audited(
    admin_client: Client, stored: OAuthConnection, queued: Queue, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            CHANGELIST, {"action": "refresh_now", "_selected_action": [stored.pk]}, follow=True
        )
    assert "Queued a refresh for 1 connection(s)." in response.content.decode()
    assert [kwargs for kwargs, _ in queued.calls] == [{"connection_id": stored.pk, "force": True}]
    event = AuditEvent.objects.get(event="oauth_connection.refresh_requested")
    assert (event.actor.email, event.subject, event.target) == ("support@niyra.ai", stored.user, "gmail")

    # The task it queued brings the connection back (the provider answers again).
    from connections.tasks import oauth_connection_refresh

    assert oauth_connection_refresh(**queued.calls[0][0]) == "refreshed"
    stored.refresh_from_db()
    assert (stored.status, stored.consecutive_failures) == (ConnectionStatus.ACTIVE, 0)


def test_staff_without_the_permission_cannot_refresh(stored: OAuthConnection, queued: Queue) -> None:
    staff = User.objects.create_user(email="viewer@niyra.ai", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_oauthconnection"))
    client = Client()
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 200
    client.post(CHANGELIST, {"action": "refresh_now", "_selected_action": [stored.pk]})
    assert queued.calls == []
    assert not AuditEvent.objects.filter(event="oauth_connection.refresh_requested").exists()
