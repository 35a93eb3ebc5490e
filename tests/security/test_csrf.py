"""CSRF: every state-changing dashboard request needs the token, and so does every
session-authenticated API write; an API token (Bearer) needs none. The gateway's paths (/v1/,
/anthropic/, /openai/) take API tokens only: a session is never a caller there, so CSRF never
applies.

Routes are enumerated from the URL patterns, so a new dashboard form or API write is caught:
its unsafe methods are refused without a token by the same loop, and the "works with the
token" tests fail until the new route's valid request is listed in DASHBOARD_FORMS or
API_WRITES. A refused request must change nothing (every row of the user's, the provider
sandbox's log, the session).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import ApiToken, AuditEvent, User
from accounts.services import api_token_create
from byok.models import ProviderKey
from byok.services import provider_key_save
from connections.models import OAuthAuthorizationRequest, OAuthConnection
from credits.models import BillingAccount
from notifications.models import EmailOptOut, Kind, Notification
from notifications.services import notification_send
from routing.models import RoutedCall, RoutingPreference
from sandbox import SandboxServer, anthropic_key
from tests.routing.conftest import live_asgi  # noqa: F401 - a fixture, shared
from tests.security.test_idor import (
    INTEGRATION,
    Route,
    accepted_methods,
    all_routes,
    assert_unchanged,
    connect,
    make_pro,
    sandbox_integration,
    snapshot,
)

pytestmark = pytest.mark.django_db
# Tests whose requests reach the gateway (the Try page, /api/llm/messages) commit their data: the
# gateway reads it on its own connections.
GATEWAY_DB = pytest.mark.django_db(transaction=True)

UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Setup:
    user: User
    token: ApiToken  # one of the user's API tokens, to revoke
    bearer: str  # another, to call the API with


@pytest.fixture
def setup(make_user: Callable[..., Any], settings: Any, sandbox: SandboxServer) -> Iterator[Setup]:
    sandbox_integration(settings, sandbox)
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"byok_save": "1000/hour", "byok_test": "1000/hour"},
    }
    cache.clear()
    user = make_pro(make_user, "csrf@example.com", 5_000_000)
    provider_key_save(user=user, provider="anthropic", key=anthropic_key())
    connect(user)
    notification_send(user_id=user.pk, kind=Kind.KEY_RECOVERED, event_key="csrf", title="Works again", body=".")
    yield Setup(
        user=user,
        token=api_token_create(user=user, name="to-revoke").token,
        bearer=api_token_create(user=user, name="cli").plaintext,
    )
    cache.clear()


def _kwargs(route: Route, setup: Setup) -> dict[str, Any]:
    values = {"provider": "anthropic", "integration": INTEGRATION, "token_id": setup.token.pk}
    return {name: values[name] for name in route.params}


def _dashboard_routes() -> list[Route]:
    return [r for r in all_routes() if r.name and not r.is_api and not r.is_admin]


def _browser(user: User | None) -> Client:
    """A browser that checks CSRF like production, signed in, with the CSRF cookie set."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    assert client.get("/login/" if user is None else "/settings/tokens/").status_code == 200
    assert "csrftoken" in client.cookies
    return client


def _signed_in(client: Client, user: User) -> bool:
    return client.session.get("_auth_user_id") == str(user.pk)


# --- refused without a token ----------------------------------------------------------------------


def test_every_unsafe_dashboard_request_without_a_valid_token_is_refused_and_changes_nothing(
    setup: Setup, sandbox: SandboxServer
) -> None:
    routes = _dashboard_routes()
    assert {"dashboard:byok-save", "dashboard:token-create", "login", "logout"} <= {r.name for r in routes}
    browser = _browser(setup.user)
    anonymous = _browser(None)
    before, provider_calls = snapshot(setup.user), len(sandbox.log)
    body = {"key": anthropic_key(), "name": "x", "prompt": "hi", "model": "claude-haiku-4-5", "max_tokens": "5"}
    login = {"username": setup.user.email, "password": "correct-horse-battery"}

    forged: dict[str, Any] = {"HTTP_X_CSRFTOKEN": "forged" * 8}
    for route in routes:
        url = reverse(route.name, kwargs=_kwargs(route, setup))
        attempts = [
            *((browser, method, body, {}) for method in UNSAFE),
            (browser, "POST", body, {"HTTP_HX_REQUEST": "true"}),
            (browser, "POST", body, forged),
            (browser, "POST", {**body, "csrfmiddlewaretoken": "forged" * 8}, {}),
            (anonymous, "POST", {**body, **login}, {}),
            (anonymous, "POST", {**body, **login}, forged),
        ]
        for client, method, data, headers in attempts:
            response = client.generic(method, url, urlencode(data), "application/x-www-form-urlencoded", **headers)
            what = f"{method} {url} {headers} ({'anonymous' if client is anonymous else 'signed in'})"
            assert response.status_code == 403, f"{what}: {response.status_code}"
        assert_unchanged(before, snapshot(setup.user), f"unsafe requests to {url}")

    assert len(sandbox.log) == provider_calls  # no key probe, no revocation, no message
    assert _signed_in(browser, setup.user)  # logout without a token did not log out
    assert not _signed_in(anonymous, setup.user)  # login without a token did not log in


# --- and works with it --------------------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    """A valid submission of one dashboard form, and how to tell that it took effect."""

    name: str
    data: dict[str, str]
    status: int
    took_effect: Callable[[Setup], bool]
    anonymous: bool = False


def _audited(event: str) -> Callable[[Setup], bool]:
    return lambda s: AuditEvent.objects.filter(subject=s.user, event=event).exists()


DASHBOARD_FORMS = (  # in this order: each may rely on the ones before
    Form(
        "dashboard:byok-save",
        {"key": anthropic_key()},
        302,
        lambda s: AuditEvent.objects.filter(subject=s.user, event="provider_key.rotated").exists(),
    ),
    Form("dashboard:byok-test", {}, 302, _audited("provider_key.tested")),
    Form("dashboard:byok-disconnect", {}, 302, lambda s: not ProviderKey.objects.filter(user=s.user).exists()),
    Form(
        "dashboard:token-create",
        {"name": "from-the-form"},
        200,
        lambda s: s.user.api_tokens.filter(name="from-the-form").exists(),
    ),
    Form("dashboard:token-revoke", {}, 302, lambda s: ApiToken.objects.get(pk=s.token.pk).revoked_at is not None),
    Form(
        "dashboard:connection-connect",
        {},
        302,
        lambda s: OAuthAuthorizationRequest.objects.filter(user=s.user).count() == 2,
    ),
    Form(
        "dashboard:connection-disconnect", {}, 302, lambda s: not OAuthConnection.objects.filter(user=s.user).exists()
    ),
    Form(
        "dashboard:try",
        {"model": "claude-haiku-4-5", "prompt": "Say hello", "max_tokens": "5"},
        200,
        lambda s: RoutedCall.objects.filter(user=s.user, outcome="ok").exists(),
    ),
    Form(
        "dashboard:notification-settings",
        {"email": "key_problem"},
        302,
        lambda s: EmailOptOut.objects.filter(user=s.user).count() == len(Kind) - 1,
    ),
    Form(
        "dashboard:notifications-read",
        {},
        302,
        lambda s: (
            Notification.objects.filter(user=s.user, read_at=None).count() == 0
            and Notification.objects.filter(user=s.user, event_key="csrf").exclude(read_at=None).exists()
        ),
    ),
    Form(
        "routing-fallback",
        {"fallback": "on", "cap": "2.5"},
        302,
        lambda s: RoutingPreference.objects.get(user=s.user).fallback_daily_cap_mc == 2_500,
    ),
    Form(
        "dashboard:credits-alerts",
        {"thresholds": "40, 5"},
        302,
        lambda s: BillingAccount.objects.get(user=s.user).alert_thresholds == [40_000, 5_000],
    ),
    Form("logout", {}, 302, lambda s: True),  # checked on the session below
    Form("login", {"password": "correct-horse-battery"}, 302, lambda s: True, anonymous=True),
)


def test_every_dashboard_route_that_accepts_post_has_a_valid_form_listed() -> None:
    posting = {route.name for route in _dashboard_routes() if "POST" in accepted_methods(route)}

    assert posting == {form.name for form in DASHBOARD_FORMS}


@GATEWAY_DB
def test_every_dashboard_form_works_with_its_token(setup: Setup) -> None:
    routes = {route.name: route for route in _dashboard_routes()}
    browser, anonymous = _browser(setup.user), _browser(None)

    for form in DASHBOARD_FORMS:
        client = anonymous if form.anonymous else browser
        data = {**form.data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
        if form.name == "login":
            data["username"] = setup.user.email
        url = reverse(form.name, kwargs=_kwargs(routes[form.name], setup))

        response = client.post(url, data)

        assert response.status_code == form.status, f"{form.name}: {response.status_code}"
        assert form.took_effect(setup), form.name
    assert not _signed_in(browser, setup.user)
    assert _signed_in(anonymous, setup.user)


def test_htmx_sends_the_token_as_a_header_and_that_is_enough(setup: Setup) -> None:
    browser = _browser(setup.user)
    token = browser.cookies["csrftoken"].value

    response = browser.post(
        "/settings/tokens/create", {"name": "via-htmx"}, HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 200
    assert setup.user.api_tokens.filter(name="via-htmx").exists()
    assert 'hx-headers=\'{"X-CSRFToken": "' in browser.get("/settings/byok/").content.decode()


# --- the API: session writes need the token, Bearer writes don't ----------------------------------


@dataclass(frozen=True)
class Write:
    name: str
    method: str
    body: dict[str, Any] | None
    status: int  # with the token (or a Bearer token)
    kwargs: Callable[[Setup], dict[str, Any]] = lambda s: {}
    prepare: Callable[[Setup], None] = lambda s: None


def _reconnect(setup: Setup) -> None:
    connect(setup.user)


def _fresh_token(setup: Setup) -> dict[str, Any]:
    return {"token_id": api_token_create(user=setup.user, name="fresh").token.pk}


API_WRITES = (  # in this order: each may rely on the ones before
    Write("api-provider-key", "PUT", {"key": "<fresh>"}, 200, lambda s: {"provider": "anthropic"}),
    Write("api-provider-key-test", "POST", None, 200, lambda s: {"provider": "anthropic"}),
    Write("api-provider-key", "DELETE", None, 204, lambda s: {"provider": "anthropic"}),
    Write("api-token-create", "POST", {"name": "made-by-api"}, 201),
    Write("api-token-revoke", "DELETE", None, 204, _fresh_token),
    Write("api-oauth-connection-connect", "POST", None, 200, lambda s: {"integration": INTEGRATION}),
    Write(
        "api-oauth-connection",
        "DELETE",
        None,
        204,
        lambda s: {"integration": INTEGRATION},
        _reconnect,
    ),
    # A user (session or token) may never meter usage: that takes a service token.
    Write("api-usage-events", "POST", {"user": "x", "category": "tool_call", "units": 1, "idempotency_key": "k"}, 403),
    Write("llm-preferences", "PUT", {"fallback_to_credits": True}, 200),
    Write("api-credits-alerts", "PUT", {"thresholds": [30_000]}, 200),
    Write("api-notification-email", "PUT", {"emailed_kinds": ["key_recovered"]}, 200),
    Write("api-notifications-read", "POST", None, 200),
    Write(
        "llm-messages",
        "POST",
        {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        200,
    ),
)


def _api_writes() -> set[tuple[str, str]]:
    return {
        (route.name, method)
        for route in all_routes()
        if route.is_api and route.name
        for method in accepted_methods(route) & set(UNSAFE)
    }


def test_every_api_write_is_listed() -> None:
    assert _api_writes() == {(w.name, w.method) for w in API_WRITES}


def _send(client: APIClient, write: Write, kwargs: dict[str, Any], **headers: Any) -> Any:
    url = reverse(write.name, kwargs=kwargs)
    body = write.body
    if body == {"key": "<fresh>"}:
        body = {"key": anthropic_key()}
    return client.generic(write.method, url, json.dumps(body or {}), "application/json", **headers)


@GATEWAY_DB
def test_session_api_writes_need_the_csrf_token(setup: Setup, sandbox: SandboxServer) -> None:
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(setup.user)
    assert session.get("/settings/tokens/").status_code == 200  # sets the CSRF cookie, as the dashboard does
    token = session.cookies["csrftoken"].value

    for write in API_WRITES:
        write.prepare(setup)
        kwargs = write.kwargs(setup)
        before, calls = snapshot(setup.user), len(sandbox.log)
        for headers in ({}, {"HTTP_X_CSRFTOKEN": "forged" * 8}):
            refused = _send(session, write, kwargs, **headers)
            what = f"{write.method} {write.name} {headers}"
            assert refused.status_code == 403, f"{what}: {refused.status_code}"
            assert refused.json()["code"] == "permission_denied", what
            assert_unchanged(before, snapshot(setup.user), what)
        assert len(sandbox.log) == calls, write.name

        accepted = _send(session, write, kwargs, HTTP_X_CSRFTOKEN=token)

        assert accepted.status_code == write.status, f"{write.name}: {accepted.status_code} {accepted.content[:200]!r}"
    assert RoutingPreference.objects.get(user=setup.user).fallback_to_credits


@GATEWAY_DB
def test_api_token_writes_need_no_csrf_token(setup: Setup) -> None:
    bearer = APIClient(enforce_csrf_checks=True)
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {setup.bearer}")

    for write in API_WRITES:
        write.prepare(setup)
        response = _send(bearer, write, write.kwargs(setup))
        assert response.status_code == write.status, f"{write.name}: {response.status_code} {response.content[:200]!r}"


def test_the_async_endpoint_says_why_a_session_write_was_refused(setup: Setup) -> None:
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(setup.user)

    response = session.post("/api/llm/messages", {}, format="json")

    assert response.status_code == 403
    assert response.json()["message"] == "CSRF token missing or incorrect."
    assert not RoutedCall.objects.filter(user=setup.user).exists()


GATEWAY_WRITES = (
    ("/v1/chat/completions", {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
    (
        "/anthropic/v1/messages",
        {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("/openai/v1/chat/completions", {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}),
)


def test_the_gateway_takes_api_tokens_only_so_csrf_never_applies(
    setup: Setup,
    live_asgi: str,  # noqa: F811 - the fixture imported above
    sandbox: SandboxServer,
) -> None:
    """A browser's session (with its CSRF token, forged or real) is no caller on the gateway's
    paths: nothing is routed for it. A Bearer token is all a call needs, and sets no cookie."""
    browser = Client()
    browser.force_login(setup.user)
    assert browser.get("/settings/tokens/").status_code == 200  # the CSRF cookie, as the dashboard sets it
    csrf = browser.cookies[django_settings.CSRF_COOKIE_NAME].value
    session = browser.cookies[django_settings.SESSION_COOKIE_NAME].value
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={session}; {django_settings.CSRF_COOKIE_NAME}={csrf}"
    calls = len(sandbox.log)

    with httpx2.Client(base_url=live_asgi, timeout=20) as http:
        for path, body in GATEWAY_WRITES:
            for headers in ({}, {"X-CSRFToken": csrf}, {"X-CSRFToken": "forged" * 8}):
                refused = http.post(path, json=body, headers=headers | {"Cookie": cookie})
                assert refused.status_code == 401, f"{path} {headers}: {refused.status_code}"
                assert refused.json()["error"]["code"] == "not_authenticated", path
        assert not RoutedCall.objects.filter(user=setup.user).exists()
        assert len(sandbox.log) == calls

        for path, body in GATEWAY_WRITES:
            accepted = http.post(path, json=body, headers={"Authorization": f"Bearer {setup.bearer}"})
            assert accepted.status_code == 200, f"{path}: {accepted.status_code} {accepted.content[:200]!r}"
            assert "set-cookie" not in accepted.headers, path
