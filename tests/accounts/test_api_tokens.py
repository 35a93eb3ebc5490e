"""API tokens: stored hashed, shown once, usable as Bearer, revocable, owner-only."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import ApiToken, AuditEvent
from accounts.services import api_token_create
from core.errors import NiyraError

pytestmark = pytest.mark.django_db


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_token_from_management_command_authenticates(user: Any) -> None:
    out = StringIO()
    call_command("create_api_token", user.email, "--name", "laptop", stdout=out, stderr=StringIO())
    plaintext = out.getvalue().strip()

    response = bearer(plaintext).get("/api/me")

    assert response.status_code == 200
    assert response.json()["email"] == user.email


def test_only_prefix_and_hash_are_stored(user: Any) -> None:
    issued = api_token_create(user=user, name="ci")

    row = ApiToken.objects.values().get(pk=issued.token.pk)

    assert issued.plaintext not in str(row)
    assert issued.plaintext.startswith(f"niy_{row['prefix']}_")
    assert len(row["token_hash"]) == 64


def test_token_is_shown_once_at_creation_and_never_listed(user: Any) -> None:
    client = APIClient()
    client.force_authenticate(user)

    created = client.post("/api/tokens/create", {"name": "script"}, format="json")
    listed = client.get("/api/tokens")

    assert created.status_code == 201
    plaintext = created.json()["token"]
    assert created["Cache-Control"] == "no-store"
    assert bearer(plaintext).get("/api/me").status_code == 200
    assert plaintext not in listed.content.decode()
    assert listed.json()[0]["prefix"] == plaintext[: len("niy_") + 8]


@pytest.mark.parametrize(
    "header",
    ["Bearer niy_deadbeef_nope", "Bearer garbage", "Bearer niy__x", "Token abc"],
)
def test_bad_tokens_are_rejected(header: str, user: Any) -> None:
    api_token_create(user=user, name="real")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/me")

    assert response.status_code == 401
    assert response.json()["code"] in {"authentication_failed", "not_authenticated"}


def test_a_token_with_the_right_prefix_but_wrong_secret_fails(user: Any) -> None:
    issued = api_token_create(user=user, name="real")
    forged = issued.plaintext[:-4] + ("aaaa" if not issued.plaintext.endswith("aaaa") else "bbbb")

    assert bearer(forged).get("/api/me").status_code == 401


def test_revoked_token_stops_working_and_is_audited(user: Any) -> None:
    issued = api_token_create(user=user, name="old")
    client = APIClient()
    client.force_authenticate(user)

    response = client.delete(f"/api/tokens/{issued.token.pk}")

    assert response.status_code == 204
    assert bearer(issued.plaintext).get("/api/me").status_code == 401
    assert AuditEvent.objects.filter(subject=user, event="api_token.revoked").count() == 1


def test_cannot_revoke_someone_elses_token(make_user: Any) -> None:
    alice, mallory = make_user("alice@example.com"), make_user("mallory@example.com")
    issued = api_token_create(user=alice, name="alice's")
    client = APIClient()
    client.force_authenticate(mallory)

    response = client.delete(f"/api/tokens/{issued.token.pk}")

    assert response.status_code == 404
    assert ApiToken.objects.get(pk=issued.token.pk).revoked_at is None
    assert bearer(issued.plaintext).get("/api/me").status_code == 200


def test_inactive_user_token_is_rejected(user: Any) -> None:
    issued = api_token_create(user=user, name="x")
    user.is_active = False
    user.save()

    assert bearer(issued.plaintext).get("/api/me").status_code == 401


def test_service_tokens_are_for_staff_only(make_user: Any) -> None:
    regular = make_user("regular@example.com")
    staff = make_user("svc@example.com", is_staff=True)

    with pytest.raises(NiyraError):
        api_token_create(user=regular, name="svc", kind="service")
    assert api_token_create(user=staff, name="svc", kind="service").token.kind == "service"


def test_blank_token_name_is_a_clear_error(user: Any) -> None:
    with pytest.raises(NiyraError) as excinfo:
        api_token_create(user=user, name="   ")
    assert excinfo.value.code == "invalid_input"
