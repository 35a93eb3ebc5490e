"""The production ASGI stack (`niyra.asgi`): the gateway's app in front of Django's, which
serves the dashboard and Niyra's own API with Django's middleware unchanged."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx2
import pytest
from django.conf import settings

from core.request_observer import RequestObserver
from credits.models import LedgerEntry
from routing.gateway.asgi import GatewayApplication
from routing.models import RoutedCall
from tests.conftest import DEFAULT_PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def plain_http_cookies(settings: Any) -> None:
    """The live server speaks plain HTTP: let the client send the session and CSRF cookies back."""
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


def test_gateway_paths_never_reach_django_and_the_rest_always_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's prefixes are answered in front of Django (no session, CSRF or template
    machinery on an SDK's call); every other path goes to Django's own handler, unchanged."""
    reached: list[str] = []

    async def django_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = GatewayApplication(django_app)
    answers: dict[str, int] = {}

    async def call(path: str) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answers[path] = message["status"]

        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
        await app(scope, receive, send)

    for path in ("/v1/models", "/anthropic/v1/models", "/openai/v1/models", "/v1/nothing", "/", "/api/keys", "/v1"):
        asyncio.run(call(path))
    assert reached == ["/", "/api/keys", "/v1"]
    assert answers["/v1/models"] == answers["/anthropic/v1/models"] == answers["/openai/v1/models"] == 401
    assert answers["/v1/nothing"] == 404


def test_the_asgi_entry_point_is_the_gateway_in_front_of_django() -> None:
    from niyra.asgi import application

    assert isinstance(application, RequestObserver)
    assert isinstance(application.app, GatewayApplication)


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)


@pytest.mark.usefixtures("plain_http_cookies")
def test_sign_in_session_csrf_and_headers_over_the_asgi_server(live_asgi: str, make_account: Any) -> None:
    user = make_account(plan="pro")
    with httpx2.Client(base_url=live_asgi, follow_redirects=False, timeout=15) as browser:
        login = browser.get("/login/")
        assert login.status_code == 200
        assert login.headers["X-Frame-Options"] == "DENY"  # XFrameOptionsMiddleware
        assert login.headers["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware

        signed_in = browser.post(
            "/login/",
            data={"username": user.email, "password": DEFAULT_PASSWORD, "csrfmiddlewaretoken": csrf_token(login.text)},
        )
        assert signed_in.status_code == 302, signed_in.text[:500]
        assert settings.SESSION_COOKIE_NAME in browser.cookies
        home = browser.get("/")
        assert home.status_code == 200
        assert user.email in home.text

        # CSRF still refuses a form post without the token...
        refused = browser.post("/settings/tokens/create", data={"name": "no token"})
        assert refused.status_code == 403
        # ...and accepts it with one.
        page = browser.get("/settings/tokens/")
        created = browser.post(
            "/settings/tokens/create", data={"name": "with token", "csrfmiddlewaretoken": csrf_token(page.text)}
        )
        assert created.status_code in (200, 302)
        assert user.api_tokens.filter(name="with token").exists()
        assert not user.api_tokens.filter(name="no token").exists()

        # CommonMiddleware's APPEND_SLASH redirect still happens.
        assert browser.get("/settings/tokens").status_code == 301


@pytest.mark.usefixtures("plain_http_cookies")
def test_session_authenticated_llm_call_over_the_asgi_server(live_asgi: str, make_account: Any) -> None:
    """The async endpoint, signed in with a session: CSRF demanded, then served and billed."""
    user = make_account(plan="free")
    with httpx2.Client(base_url=live_asgi, follow_redirects=False, timeout=15) as browser:
        login = browser.get("/login/")
        browser.post(
            "/login/",
            data={"username": user.email, "password": DEFAULT_PASSWORD, "csrfmiddlewaretoken": csrf_token(login.text)},
        )
        body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hello there"}]}
        assert browser.post("/api/llm/messages", json=body).status_code == 403
        token = browser.cookies[settings.CSRF_COOKIE_NAME]
        served = browser.post("/api/llm/messages", json=body, headers={"X-CSRFToken": token})
    assert served.status_code == 200, served.text
    assert served.json()["routing"]["key_source"] == "platform"
    assert RoutedCall.objects.filter(user=user, outcome="ok").count() == 1
    assert LedgerEntry.objects.filter(account__user=user, category="llm").count() == 1
