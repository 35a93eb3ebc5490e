"""Dashboard → Connections: connect through the provider, the callback, reconnect, disconnect."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from connections.models import ConnectionStatus, OAuthConnection
from sandbox import SandboxServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def pro_browser(pro_user: Any) -> Client:
    client = Client()
    client.force_login(pro_user)
    return client


@pytest.fixture
def sandbox_integration(settings: Any, sandbox: SandboxServer) -> str:
    base = sandbox.url + "/oauth"
    settings.OAUTH_INTEGRATIONS = {
        "sandbox": {
            "label": "Provider sandbox",
            "client_id": "sandbox-app",
            "client_secret": "secret-sandbox-app",
            "authorize_url": f"{base}/authorize",
            "token_url": f"{base}/token",
            "revoke_url": f"{base}/revoke",
            "scopes": ["profile", "email"],
        }
    }
    return "sandbox"


def test_connections_list_integrations_and_connect_goes_to_the_provider(
    pro_browser: Client, sandbox_integration: str, sandbox: SandboxServer
) -> None:
    page = pro_browser.get("/settings/connections/").content.decode()
    assert "Provider sandbox" in page and "Not connected" in page and ">Connect<" in page

    response = pro_browser.post(f"/settings/connections/{sandbox_integration}/connect")

    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert response["Location"].startswith(sandbox.url + "/oauth/authorize?")
    query = parse_qs(location.query)
    assert query["redirect_uri"] == ["http://testserver/oauth/callback/sandbox"]
    assert query["code_challenge_method"] == ["S256"]


def test_connect_then_callback_shows_active_with_expiry_then_disconnect(
    pro_browser: Client, pro_user: Any, sandbox_integration: str
) -> None:
    import httpx2

    authorize = pro_browser.post(f"/settings/connections/{sandbox_integration}/connect", HTTP_HX_REQUEST="true")
    back = httpx2.get(authorize["HX-Redirect"], follow_redirects=False)  # the sandbox consents at once
    callback = urlsplit(back.headers["location"])
    pro_browser.get(f"{callback.path}?{callback.query}")

    page = pro_browser.get("/settings/connections/").content.decode()
    assert "Active" in page and "Expires at" in page and "Reconnect" in page
    connection = OAuthConnection.objects.get(user=pro_user)
    assert connection.status == ConnectionStatus.ACTIVE

    confirm = pro_browser.get(f"/settings/connections/{sandbox_integration}/disconnect", HTTP_HX_REQUEST="true")
    assert "Yes, disconnect" in confirm.content.decode()
    done = pro_browser.post(f"/settings/connections/{sandbox_integration}/disconnect", HTTP_HX_REQUEST="true")
    assert "Disconnected." in done.content.decode()
    assert not OAuthConnection.objects.filter(user=pro_user).exists()
    again = pro_browser.post(f"/settings/connections/{sandbox_integration}/disconnect", HTTP_HX_REQUEST="true")
    assert "This integration is not connected." in again.content.decode()


def test_connection_needing_reauth_says_reconnect(pro_browser: Client, pro_user: Any, sandbox_integration: str) -> None:
    from django.utils import timezone

    OAuthConnection.objects.create(
        user=pro_user,
        integration=sandbox_integration,
        status=ConnectionStatus.NEEDS_REAUTH,
        access_token_ciphertext=b"x",
        encryption_key_id="test1",
        token_issued_at=timezone.now(),
        connected_at=timezone.now(),
        last_error_code="oauth_needs_reauth",
    )

    page = pro_browser.get("/settings/connections/").content.decode()

    assert "Needs reconnect" in page
    assert "Access to this integration was revoked or has expired. Reconnect it to keep using it." in page
    assert ">Reconnect<" in page


def test_unknown_integration_is_404(pro_browser: Client, sandbox_integration: str) -> None:
    assert pro_browser.get("/settings/connections/nope/disconnect").status_code == 404
    response = pro_browser.post("/settings/connections/nope/connect", follow=True)
    assert "No such integration." in response.content.decode()
