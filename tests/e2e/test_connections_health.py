"""Connections health in a real browser: each connection's last and next refresh and failures, a
connection that needs a reconnect (with the notification's unread count), and the recovery note
after reconnecting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connections.models import ConnectionStatus, OAuthConnection
from connections.tasks import oauth_connection_refresh
from notifications.models import Kind, Notification
from sandbox import SandboxServer, client_secret_for, oauth_client_id

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest skips these tests (or fails them, with NIYRA_REQUIRE_BROWSER=1)
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_connections_show_refreshes_and_a_connection_needing_a_reconnect(
    open_tab: Callable[[], Any], make_customer: Callable[..., Any], settings: Any, sandbox: SandboxServer
) -> None:
    # A second integration whose grant the provider revokes at the first refresh (sandbox word).
    client_id = oauth_client_id("revoked", name="gmail")
    settings.OAUTH_INTEGRATIONS = {
        **settings.OAUTH_INTEGRATIONS,
        "gmail": {
            "label": "Gmail",
            "client_id": client_id,
            "client_secret": client_secret_for(client_id),
            "authorize_url": f"{sandbox.url}/oauth/authorize",
            "token_url": f"{sandbox.url}/oauth/token",
            "revoke_url": f"{sandbox.url}/oauth/revoke",
            "scopes": ["mail.read"],
        },
    }
    user = make_customer(credits_mc=500_000)  # well above the low-balance banner's threshold
    tab = open_tab()
    page = tab.page
    tab.login(user.email)

    tab.goto("/settings/connections/")
    for name, label in (("sandbox", "Provider sandbox"), ("gmail", "Gmail")):
        page.get_by_test_id(f"conn-{name}").get_by_role("button", name="Connect").click()
        expect(page.get_by_role("status")).to_contain_text(f"{label} is connected.")
        tab.assert_clean()

    # The daemon refreshes both: the sandbox's works, Gmail's grant turns out revoked.
    connections = {c.integration: c for c in OAuthConnection.objects.filter(user=user)}
    assert oauth_connection_refresh(connection_id=connections["sandbox"].pk, force=True) == "refreshed"
    assert oauth_connection_refresh(connection_id=connections["gmail"].pk, force=True) == "needs_reauth"

    tab.goto("/settings/connections/")
    working = page.get_by_test_id("conn-sandbox")
    expect(working.get_by_test_id("status")).to_have_text("Active")
    expect(working.get_by_test_id("last-refresh")).to_contain_text("UTC")
    expect(working.get_by_test_id("next-refresh")).to_contain_text("At about")
    expect(working.get_by_test_id("failures")).to_have_text("0")
    broken = page.get_by_test_id("conn-gmail")
    expect(broken.get_by_test_id("status")).to_have_text("Needs reconnect")
    expect(broken.get_by_role("alert")).to_contain_text("Access to this integration was revoked or has expired.")
    expect(broken.get_by_test_id("health-note")).to_contain_text("Stopped working since")
    expect(broken.get_by_test_id("next-refresh")).to_contain_text("Reconnect it to resume.")
    expect(broken.get_by_test_id("last-failure")).to_contain_text("invalid_grant")
    expect(page.get_by_test_id("unread-count")).to_have_text("1")  # "Reconnect Gmail: ..."
    tab.shot("connections-health")

    # Reconnect: it works again, said on the row and in a second notification.
    broken.get_by_role("button", name="Reconnect").click()
    expect(page.get_by_role("status")).to_contain_text("Gmail is connected.")
    expect(broken.get_by_test_id("status")).to_have_text("Active")
    expect(broken.get_by_test_id("health-note")).to_contain_text("Working again since")
    tab.assert_clean()
    assert OAuthConnection.objects.get(pk=connections["gmail"].pk).status == ConnectionStatus.ACTIVE
    kinds = sorted(Notification.objects.filter(user=user).values_list("kind", flat=True))
    assert kinds == sorted([Kind.CONNECTION_NEEDS_REAUTH, Kind.CONNECTION_RECOVERED])
