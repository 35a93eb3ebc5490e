"""Dashboard login/logout and an admin smoke test."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_login_page_renders_with_csrf(client: Client) -> None:
    response = client.get("/login/")

    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content
    assert b'type="password"' in response.content


def test_login_then_home_then_logout(user: Any) -> None:
    client = Client(enforce_csrf_checks=False)

    assert client.get("/").status_code == 302
    response = client.post("/login/", {"username": user.email, "password": "correct-horse-battery"}, follow=True)
    assert response.status_code == 200
    assert user.email.encode() in response.content

    client.post("/logout/")
    assert client.get("/").status_code == 302


def test_wrong_password_shows_an_error(user: Any, client: Client) -> None:
    response = client.post("/login/", {"username": user.email, "password": "nope"})

    assert response.status_code == 200
    assert b"didn't match" in response.content


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/accounts/user/",
        "/admin/accounts/apitoken/",
        "/admin/accounts/auditevent/",
        "/admin/credits/billingaccount/",
        "/admin/credits/ledgerentry/",
    ],
)
def test_admin_pages_render_for_superuser(admin_client: Client, url: str) -> None:
    assert admin_client.get(url).status_code == 200


def test_openapi_schema_and_docs_render(admin_client: Client) -> None:
    schema = admin_client.get("/api/schema/")
    docs = admin_client.get("/api/docs/")

    assert schema.status_code == 200
    assert b"bearerAuth" in schema.content
    assert docs.status_code == 200
