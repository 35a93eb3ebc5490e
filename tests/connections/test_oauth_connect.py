"""Connect flow end to end (REST start -> provider consent -> browser callback), its bad inputs,
reconnect, disconnect with revocation, and IDOR: only your own connections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx2
import pytest
from django.contrib.messages import get_messages
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from connections.models import ConnectionStatus, OAuthAuthorizationRequest, OAuthConnection
from connections.services import connection_connect_complete, connection_connect_start
from core.errors import (
    OAUTH_ACCESS_DENIED,
    OAUTH_CODE_MISSING,
    OAUTH_CODE_REJECTED,
    OAUTH_PROVIDER_REJECTED,
    OAUTH_PROVIDER_UNAVAILABLE,
    OAUTH_STATE_INVALID,
    OAUTH_TOKEN_RESPONSE_MALFORMED,
    NiyraError,
)
from sandbox import SandboxServer
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import (
    REDIRECT_BASE,
    URLCONF,
    authorize,
    connect,
    tokens_of,
)

# Shared fixtures (assigned, not imported, so the test functions' parameters don't shadow an import).
clock = helpers.clock
integrations = helpers.integrations
queued = helpers.queued

pytestmark = [pytest.mark.django_db, pytest.mark.urls(URLCONF)]


@pytest.fixture
def browser(pro_user: Any) -> Client:
    client = Client()
    client.force_login(pro_user)
    return client


def start(client: APIClient, integration: str = "gmail") -> str:
    response = client.post(f"/api/oauth/connections/{integration}/connect")
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    return str(response.json()["authorize_url"])


def callback(browser: Client, integration: str = "gmail", **query: str) -> list[str]:
    """GET the callback like the provider's redirect does; the message it leaves for the dashboard."""
    response = browser.get(f"/oauth/callback/{integration}", query)
    assert response.status_code == 302 and response["Location"] == "/settings/connections/"
    assert response["Cache-Control"].startswith("max-age=0")
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    return shown[-1:]  # earlier callbacks' messages wait in the session until a page shows them


def snapshot() -> list[tuple[Any, ...]]:
    """Everything about the stored connections, ciphertexts included: "nothing changed" means equal."""
    return [
        tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
        for row in OAuthConnection.objects.order_by("pk").values_list()
    ]


def test_connect_end_to_end_stores_encrypted_tokens(
    integrations: Callable[..., str], pro_user: Any, pro_client: APIClient, browser: Client, sandbox: SandboxServer
) -> None:
    integrations("gmail")
    url = start(pro_client)
    query = parse_qs(urlsplit(url).query)
    # The authorization request: code flow, our redirect URI, a state, PKCE S256, the scopes.
    assert query["response_type"] == ["code"] and query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [REDIRECT_BASE + "gmail"]
    assert query["scope"] == ["mail.read mail.send"] and len(query["state"][0]) >= 32
    assert "code_verifier" not in url
    pending = OAuthAuthorizationRequest.objects.get(user=pro_user)
    assert query["state"][0] not in pending.state_hash  # only a hash of the state is kept

    messages = callback(browser, **authorize(url))

    assert messages == ["Gmail is connected."]
    connection = OAuthConnection.objects.get(user=pro_user, integration="gmail")
    assert connection.status == ConnectionStatus.ACTIVE and connection.expires_at is not None
    assert connection.scopes == "mail.read mail.send" and connection.consecutive_failures == 0
    access, refresh = tokens_of(connection)
    assert access.startswith("sbx_at_") and refresh is not None and refresh.startswith("sbx_rt_")
    assert access.encode() not in bytes(connection.access_token_ciphertext)
    # The access token works at the provider.
    userinfo = httpx2.get(f"{sandbox.oauth_base_url}/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert userinfo.status_code == 200
    assert AuditEvent.objects.filter(event="oauth_connection.connected", subject=pro_user, target="gmail").exists()
    # Listed without tokens.
    [listed] = pro_client.get("/api/oauth/connections").json()
    assert listed["integration"] == "gmail" and listed["status"] == "active" and listed["last_error"] is None
    assert access not in str(listed) and refresh not in str(listed)


def test_ciphertexts_are_bound_to_the_connection(
    integrations: Callable[..., str], pro_user: Any, make_plan_user: Any
) -> None:
    from connections.models import oauth_access_token_purpose
    from core.crypto import DecryptionError, get_keyring

    integrations("gmail")
    connection = connect(pro_user)
    other = make_plan_user("pro")
    with pytest.raises(DecryptionError):
        get_keyring().decrypt(
            connection.access_token_ciphertext,
            purpose=oauth_access_token_purpose(user_id=other.pk, integration="gmail"),
        )


def test_reconnect_replaces_the_tokens(integrations: Callable[..., str], pro_user: Any) -> None:
    integrations("gmail")
    first = connect(pro_user)
    before = tokens_of(first)

    second = connect(pro_user)

    assert second.pk == first.pk and OAuthConnection.objects.count() == 1
    assert tokens_of(second) != before
    assert AuditEvent.objects.filter(event="oauth_connection.reconnected").count() == 1


def test_reconnect_revives_a_connection_that_needed_it(integrations: Callable[..., str], pro_user: Any) -> None:
    integrations("gmail")
    connection = connect(pro_user)
    OAuthConnection.objects.filter(pk=connection.pk).update(
        status=ConnectionStatus.NEEDS_REAUTH, last_error_code="oauth_needs_reauth", consecutive_failures=3
    )
    connection = connect(pro_user)
    assert (connection.status, connection.consecutive_failures, connection.last_error_code) == ("active", 0, "")


@pytest.mark.parametrize(
    ("tamper", "spec"),
    [
        ("unknown_state", OAUTH_STATE_INVALID),
        ("no_state", OAUTH_STATE_INVALID),
        ("other_integration", OAUTH_STATE_INVALID),
        ("missing_code", OAUTH_CODE_MISSING),
        ("provider_error", OAUTH_ACCESS_DENIED),
        ("wrong_code", OAUTH_CODE_REJECTED),
    ],
)
def test_bad_callbacks_change_nothing(
    tamper: str, spec: Any, integrations: Callable[..., str], pro_user: Any, pro_client: APIClient, browser: Client
) -> None:
    integrations("gmail")
    integrations("slack")
    connect(pro_user)  # an existing connection that must come out untouched
    before = snapshot()
    query = authorize(start(pro_client))
    integration = "gmail"
    if tamper == "unknown_state":
        query["state"] = "x" * 43
    elif tamper == "no_state":
        del query["state"]
    elif tamper == "other_integration":
        integration = "slack"
    elif tamper == "missing_code":
        del query["code"]
    elif tamper == "provider_error":
        query = {"state": query["state"], "error": "access_denied", "error_description": "User said no"}
    elif tamper == "wrong_code":
        query["code"] = "sbx_code_forged"

    messages = callback(browser, integration, **query)

    assert messages == [spec.message]
    assert snapshot() == before
    assert AuditEvent.objects.filter(event="oauth_connection.connect_failed", outcome=spec.code).exists()


def test_a_state_works_once(
    integrations: Callable[..., str], pro_user: Any, pro_client: APIClient, browser: Client
) -> None:
    integrations("gmail")
    query = authorize(start(pro_client))
    assert callback(browser, **query) == ["Gmail is connected."]
    before = snapshot()

    assert callback(browser, **query) == [OAUTH_STATE_INVALID.message]
    assert snapshot() == before


def test_someone_elses_state_is_refused(
    integrations: Callable[..., str], pro_user: Any, make_plan_user: Any, client_for: Any
) -> None:
    """A callback carrying another user's state (a link sent to a victim) connects nothing."""
    integrations("gmail")
    attacker = make_plan_user("pro")
    query = authorize(start(client_for(attacker)))
    victim_browser = Client()
    victim_browser.force_login(pro_user)

    assert callback(victim_browser, **query) == [OAUTH_STATE_INVALID.message]
    assert not OAuthConnection.objects.exists()


def test_an_expired_state_is_refused(
    integrations: Callable[..., str], pro_user: Any, clock: Any, pro_client: APIClient, browser: Client
) -> None:
    integrations("gmail")
    query = authorize(start(pro_client))
    clock.advance(11 * 60)
    assert callback(browser, **query) == [OAUTH_STATE_INVALID.message]
    assert not OAuthConnection.objects.exists()


def test_pkce_failure_is_a_rejected_code(
    integrations: Callable[..., str], pro_user: Any, pro_client: APIClient, browser: Client
) -> None:
    """The code was issued for another code challenge (e.g. an intercepted code): the provider's
    PKCE check fails, nothing is stored."""
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    integrations("gmail")
    url = urlsplit(start(pro_client))
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    params["code_challenge"] = create_s256_code_challenge("a-different-verifier-" + "x" * 40)
    query = authorize(urlunsplit(url._replace(query=urlencode(params))))

    assert callback(browser, **query) == [OAUTH_CODE_REJECTED.message]
    assert not OAuthConnection.objects.exists()
    event = AuditEvent.objects.get(event="oauth_connection.connect_failed")
    assert event.details["reason"] == "invalid_grant"


@pytest.mark.parametrize(
    ("word", "spec"),
    [
        ("malformed", OAUTH_TOKEN_RESPONSE_MALFORMED),
        ("down", OAUTH_PROVIDER_UNAVAILABLE),
        ("error", OAUTH_PROVIDER_UNAVAILABLE),
        ("ratelimit", OAUTH_PROVIDER_UNAVAILABLE),
        ("invalid", OAUTH_PROVIDER_REJECTED),
    ],
)
def test_provider_failures_during_the_exchange(
    word: str, spec: Any, integrations: Callable[..., str], pro_user: Any
) -> None:
    integrations("gmail", word)
    url = connection_connect_start(user=pro_user, integration="gmail", redirect_uri=REDIRECT_BASE + "gmail")
    query = authorize(url)
    with pytest.raises(NiyraError) as caught:
        connection_connect_complete(user=pro_user, integration="gmail", state=query["state"], code=query["code"])
    assert caught.value.spec == spec
    assert not OAuthConnection.objects.exists()


def test_unknown_integration(pro_client: APIClient, integrations: Callable[..., str]) -> None:
    response = pro_client.post("/api/oauth/connections/nope/connect")
    assert response.status_code == 404 and response.json()["code"] == "oauth_integration_unknown"


def test_integrations_are_listed_without_client_secrets(
    integrations: Callable[..., str], pro_client: APIClient, settings: Any
) -> None:
    integrations("gmail")
    body = pro_client.get("/api/oauth/integrations").json()
    assert body == [
        {"name": "gmail", "display_name": "Gmail", "scopes": ["mail.read", "mail.send"], "supports_revocation": True}
    ]


def test_disconnect_deletes_and_revokes_at_the_provider(
    integrations: Callable[..., str], pro_user: Any, pro_client: APIClient, sandbox: SandboxServer
) -> None:
    integrations("gmail")
    access, _ = tokens_of(connect(pro_user))

    response = pro_client.delete("/api/oauth/connections/gmail")

    assert response.status_code == 204
    assert not OAuthConnection.objects.exists()
    userinfo = httpx2.get(f"{sandbox.oauth_base_url}/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert userinfo.status_code == 401  # the grant is revoked
    assert AuditEvent.objects.filter(event="oauth_connection.disconnected").exists()
    assert AuditEvent.objects.get(event="oauth_connection.revoked_at_provider").outcome == "ok"
    assert pro_client.delete("/api/oauth/connections/gmail").status_code == 404


def test_disconnect_without_revocation_support(
    integrations: Callable[..., str], pro_user: Any, pro_client: APIClient, sandbox: SandboxServer
) -> None:
    integrations("gmail", revoke_url="")
    connect(pro_user)
    assert pro_client.delete("/api/oauth/connections/gmail").status_code == 204
    assert not any(r["path"].endswith("/revoke") for r in sandbox.log.records())
    assert AuditEvent.objects.get(event="oauth_connection.disconnected").details["revocation"] == "not_supported"


def test_only_your_own_connections(
    integrations: Callable[..., str], pro_user: Any, make_plan_user: Any, client_for: Any
) -> None:
    integrations("gmail")
    mine = connect(pro_user)
    other_user = make_plan_user("pro")
    other = client_for(other_user)
    before = snapshot()

    assert other.get("/api/oauth/connections").json() == []
    assert other.delete("/api/oauth/connections/gmail").status_code == 404
    assert snapshot() == before
    assert OAuthConnection.objects.filter(pk=mine.pk).exists()


def test_anonymous_requests_are_refused(integrations: Callable[..., str], api_client: APIClient) -> None:
    integrations("gmail")
    assert api_client.get("/api/oauth/connections").status_code == 401
    assert api_client.post("/api/oauth/connections/gmail/connect").status_code == 401
    response = Client().get("/oauth/callback/gmail", {"state": "x", "code": "y"})
    assert response.status_code == 302 and response["Location"].startswith("/login/")
