"""Dashboard API tokens: create (shown once, never again), list by prefix, revoke with a
confirmation; double submits create one token."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from accounts.models import ApiToken, AuditEvent
from accounts.services import api_token_create
from core.pages import SESSION_ENDED

pytestmark = pytest.mark.django_db

PAGE = "/settings/tokens/"
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _issued(html: str) -> str:
    match = re.search(r'<code class="token" id="issued-token">(niy_[^<]+)</code>', html)
    assert match, "no token shown"
    return match.group(1)


def test_create_shows_the_token_once_and_it_works(browser: Client, user: Any) -> None:
    page = browser.get(PAGE).content.decode()
    submission = re.search(r'name="submission" value="([0-9a-f]+)"', page)
    assert submission

    response = browser.post("/settings/tokens/create", {"name": "laptop", "submission": submission.group(1)}, **HTMX)

    html = response.content.decode()
    plaintext = _issued(html)
    token = ApiToken.objects.get(user=user)
    assert plaintext.startswith(f"niy_{token.prefix}_")
    assert response["Cache-Control"].startswith("max-age=0") or "no-store" in response["Cache-Control"]
    assert Client().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {plaintext}").status_code == 200
    later = browser.get(PAGE).content.decode()
    assert plaintext not in later
    assert f"niy_{token.prefix}_…" in later


def test_double_submit_creates_one_token(browser: Client, user: Any) -> None:
    form = {"name": "ci", "submission": "abc123"}

    first = browser.post("/settings/tokens/create", form, **HTMX).content.decode()
    second = browser.post("/settings/tokens/create", form, **HTMX).content.decode()

    assert ApiToken.objects.filter(user=user).count() == 1
    assert _issued(first)
    assert "already sent" in second
    assert 'id="issued-token"' not in second


def test_name_is_required(browser: Client) -> None:
    response = browser.post("/settings/tokens/create", {"name": "  ", "submission": "s"}, **HTMX)

    assert "Give the token a name" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_without_javascript_the_page_shows_the_token(browser: Client) -> None:
    response = browser.post("/settings/tokens/create", {"name": "laptop", "submission": "s2"})

    assert response.status_code == 200
    assert b"<html" in response.content
    assert _issued(response.content.decode())


def test_revoke_asks_then_revokes(browser: Client, user: Any) -> None:
    token = api_token_create(user=user, name="old").token
    url = f"/settings/tokens/{token.pk}/revoke"

    confirm = browser.get(url, **HTMX).content.decode()
    assert "Yes, revoke" in confirm
    token.refresh_from_db()
    assert token.revoked_at is None

    done = browser.post(url, **HTMX).content.decode()
    assert "Revoked old" in done
    assert "Revoked</span>" in done
    token.refresh_from_db()
    assert token.revoked_at is not None

    browser.post(url, **HTMX)  # double click: harmless
    assert AuditEvent.objects.filter(event="api_token.revoked").count() == 1


def test_someone_elses_token_is_not_found(browser: Client, make_user: Any) -> None:
    theirs = api_token_create(user=make_user("eve@example.com"), name="theirs").token

    response = browser.post(f"/settings/tokens/{theirs.pk}/revoke", **HTMX)

    assert "No such token." in response.content.decode()
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_expired_session_on_create(client: Client) -> None:
    response = client.post("/settings/tokens/create", {"name": "x"}, HTTP_HX_REQUEST="true")

    assert response["HX-Redirect"].startswith("/login/?next=")
    assert SESSION_ENDED in client.get(response["HX-Redirect"]).content.decode()
    assert not ApiToken.objects.exists()
