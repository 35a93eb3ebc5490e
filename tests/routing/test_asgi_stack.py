"""The production ASGI stack (`niyra.handlers`): Django's middleware with inline hooks, and
database hops on the shared pool, must behave exactly like Django's own classes."""

from __future__ import annotations

import re
from typing import Any

import httpx2
import pytest
from django.conf import settings

from credits.models import LedgerEntry
from niyra import handlers
from niyra.handlers import INLINE_MIDDLEWARE, get_asgi_application
from routing.models import RoutedCall
from tests.conftest import DEFAULT_PASSWORD

pytestmark = pytest.mark.django_db


def middleware_classes(app: Any) -> list[str]:
    names = []
    handler = app._middleware_chain
    while handler is not None:
        handler = getattr(handler, "__wrapped__", handler)  # convert_exception_to_response's wrapper
        names.append(f"{type(handler).__module__}.{type(handler).__qualname__}")
        handler = getattr(handler, "get_response", None)
    return names


@pytest.fixture
def plain_http_cookies(settings: Any) -> None:
    """The live server speaks plain HTTP: let the client send the session and CSRF cookies back."""
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


def test_the_handler_swaps_in_inline_hooks_and_leaves_the_settings_alone() -> None:
    configured = list(settings.MIDDLEWARE)
    chain = middleware_classes(get_asgi_application())

    assert configured == settings.MIDDLEWARE  # what check --deploy and the admin's checks read
    for django_path, inline_path in INLINE_MIDDLEWARE.items():
        assert django_path in configured
        assert inline_path in chain
        assert django_path not in chain


def test_csrf_in_the_session_keeps_djangos_own_middleware(settings: Any) -> None:
    """CSRF_USE_SESSIONS makes CSRF's hooks read and write the session: no inline swap then."""
    settings.CSRF_USE_SESSIONS = True
    chain = middleware_classes(get_asgi_application())
    assert "django.middleware.csrf.CsrfViewMiddleware" in chain
    assert "core.middleware.CsrfViewMiddleware" not in chain
    assert "core.middleware.SessionMiddleware" in chain


def test_every_swapped_class_is_a_subclass_of_the_one_it_replaces() -> None:
    from django.utils.module_loading import import_string

    for django_path, inline_path in INLINE_MIDDLEWARE.items():
        assert issubclass(import_string(inline_path), import_string(django_path))


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

        # The session is written by SessionMiddleware's response hook (the one that still hops).
        signed_in = browser.post(
            "/login/",
            data={"username": user.email, "password": DEFAULT_PASSWORD, "csrfmiddlewaretoken": csrf_token(login.text)},
        )
        assert signed_in.status_code == 302, signed_in.text[:500]
        assert settings.SESSION_COOKIE_NAME in browser.cookies
        home = browser.get("/")
        assert home.status_code == 200
        assert user.email in home.text

        # CSRF (process_view, now inline) still refuses a form post without the token...
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


def test_database_hops_leave_the_request_thread_only_under_the_asgi_server(
    live_asgi: str, make_account: Any, client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the server, hops run on the shared pool (not a thread made per request); under
    Django's test client they stay on the caller's thread, inside its transaction."""
    import threading

    from core import db

    seen: list[str] = []
    original = db.release_connections

    def spy() -> None:
        seen.append(threading.current_thread().name)
        original()

    monkeypatch.setattr(db, "release_connections", spy)
    user = make_account(plan="free")
    token = client_for(user)._credentials["HTTP_AUTHORIZATION"]
    body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hello there"}]}
    response = httpx2.post(f"{live_asgi}/api/llm/messages", json=body, headers={"Authorization": token}, timeout=15)
    assert response.status_code == 200, response.text
    assert seen and all(name.startswith("niyra-db") for name in seen), seen
    assert handlers.ON_ASGI_SERVER.get() is False  # the test's own context was never marked
