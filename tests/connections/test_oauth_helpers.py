"""Shared fixtures and helpers for the OAuth tests (no tests here; the test modules import these).

The provider sandbox is the OAuth server: integrations are configured to point at it, with the
behaviour words in the client id (`revoked`, `norotate`, `ttl300`, ...). The clock of the OAuth
code (`connections.oauth.now`) is injected; the sandbox keeps real time, which only matters for its
own access-token expiry (never checked by a refresh).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from django.urls import include, path

from connections import oauth, tasks
from connections.models import OAuthConnection
from connections.services import connection_connect_complete, connection_connect_start
from core.crypto import get_keyring
from sandbox import SandboxServer, client_secret_for, oauth_client_id

# The project's URLconf (it includes the callback from connections.urls_web), named for the tests.
urlpatterns = [path("", include("niyra.urls"))]
URLCONF = "tests.connections.test_oauth_helpers"
REDIRECT_BASE = "http://testserver/oauth/callback/"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def sandbox_integration(sandbox: SandboxServer, *words: str, name: str = "gmail", **extra: Any) -> dict[str, Any]:
    client_id = oauth_client_id(*words, name=name)
    return {
        "label": name.title(),
        "client_id": client_id,
        "client_secret": client_secret_for(client_id),
        "authorize_url": f"{sandbox.oauth_base_url}/authorize",
        "token_url": f"{sandbox.oauth_base_url}/token",
        "revoke_url": f"{sandbox.oauth_base_url}/revoke",
        "scopes": ["mail.read", "mail.send"],
        **extra,
    }


@pytest.fixture
def integrations(settings: Any, sandbox: SandboxServer) -> Callable[..., str]:
    """`add("gmail", "norotate", ...)` configures an integration served by the sandbox."""
    settings.OAUTH_INTEGRATIONS = {}

    def add(name: str = "gmail", *words: str, **extra: Any) -> str:
        settings.OAUTH_INTEGRATIONS = {
            **settings.OAUTH_INTEGRATIONS,
            name: sandbox_integration(sandbox, *words, name=name, **extra),
        }
        return name

    return add


@dataclass
class Clock:
    """The injected clock of connections.oauth."""

    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> datetime:
        self.at += timedelta(seconds=seconds)
        return self.at


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    frozen = Clock()
    monkeypatch.setattr(oauth, "now", frozen)
    return frozen


@dataclass
class Queue:
    """Celery messages the code queued for the refresh task: (kwargs, options), in order."""

    calls: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def ids(self) -> list[int]:
        return [kwargs["connection_id"] for kwargs, _ in self.calls]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> Iterator[Queue]:
    queue = Queue()

    def apply_async(args: Any = None, kwargs: Any = None, **options: Any) -> None:
        assert not args, "the refresh task takes keyword arguments"
        queue.calls.append((dict(kwargs or {}), options))

    monkeypatch.setattr(tasks.oauth_connection_refresh, "apply_async", apply_async)
    yield queue


_browser = httpx2.Client(follow_redirects=False, timeout=5)


def authorize(url: str) -> dict[str, str]:
    """Follow the provider's consent screen (the sandbox auto-approves): the callback's query."""
    response = _browser.get(url)
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    return {name: values[0] for name, values in parse_qs(location.query).items()}


def connect(user: Any, integration: str = "gmail") -> OAuthConnection:
    """The whole connect flow through the services (the browser part done with httpx2)."""
    url = connection_connect_start(user=user, integration=integration, redirect_uri=REDIRECT_BASE + integration)
    query = authorize(url)
    return connection_connect_complete(user=user, integration=integration, state=query["state"], code=query["code"])


def tokens_of(connection: OAuthConnection) -> tuple[str, str | None]:
    """Decrypt a connection's tokens (tests only: to compare them and to look for leaks)."""
    connection.refresh_from_db()
    keyring = get_keyring()
    access = keyring.decrypt(connection.access_token_ciphertext, purpose=connection.access_token_purpose)
    refresh = (
        keyring.decrypt(connection.refresh_token_ciphertext, purpose=connection.refresh_token_purpose)
        if connection.refresh_token_ciphertext
        else None
    )
    return access, refresh


def set_expiry(connection: OAuthConnection, expires_at: datetime, *, lifetime: float = 3600) -> None:
    """Place a connection's token on the timeline (issued `lifetime` seconds before expiry)."""
    OAuthConnection.objects.filter(pk=connection.pk).update(
        expires_at=expires_at, token_issued_at=expires_at - timedelta(seconds=lifetime)
    )
    connection.refresh_from_db()


def refresh_requests(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return [r for r in sandbox.log.records() if r["grant_type"] == "refresh_token"]
