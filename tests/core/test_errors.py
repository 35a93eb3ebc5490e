"""Every API error is JSON `{code, message, detail}`: never HTML, never a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from core import errors

pytestmark = pytest.mark.django_db


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "detail"}
    assert body["code"] == code
    assert body["message"] == errors.CATALOGUE[code].message
    assert "Traceback" not in response.content.decode()
    return body


def test_unknown_api_route_is_json_404(api_client: APIClient) -> None:
    assert_error(api_client.get("/api/no/such/thing"), 404, "not_found")
    assert_error(api_client.post("/v1/nothing", {}, format="json"), 404, "not_found")


def test_missing_auth_is_401_with_bearer_challenge(api_client: APIClient) -> None:
    response = api_client.get("/api/me")

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Bearer"


def test_malformed_json_is_400(api_client: APIClient, user: Any) -> None:
    api_client.force_authenticate(user)

    response = api_client.post("/api/tokens/create", data="{not json", content_type="application/json")

    assert_error(response, 400, "malformed_json")


def test_wrong_content_type_is_415(api_client: APIClient, user: Any) -> None:
    api_client.force_authenticate(user)

    response = api_client.post("/api/tokens/create", data="name=x", content_type="application/x-www-form-urlencoded")

    assert_error(response, 415, "unsupported_media_type")


def test_wrong_method_is_405(api_client: APIClient, user: Any) -> None:
    api_client.force_authenticate(user)

    assert_error(api_client.put("/api/me", {}, format="json"), 405, "method_not_allowed")


def test_validation_error_carries_field_detail(api_client: APIClient, user: Any) -> None:
    api_client.force_authenticate(user)

    body = assert_error(api_client.post("/api/tokens/create", {}, format="json"), 400, "invalid_input")

    assert "name" in body["detail"]


@override_settings(ROOT_URLCONF="tests.core.urls_broken", DEBUG=False)
def test_unhandled_exception_is_json_500_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    client = APIClient(raise_request_exception=False)

    api = client.get("/api/boom")
    plain = client.get("/api/plain-boom")

    assert_error(api, 500, "internal_error")
    assert_error(plain, 500, "internal_error")
    assert "secret-in-exception" not in api.content.decode() + plain.content.decode()


def test_catalogue_codes_are_unique_and_statuses_are_errors() -> None:
    assert len({spec.code for spec in errors.CATALOGUE.values()}) == len(errors.CATALOGUE)
    assert all(400 <= spec.status < 600 and spec.message for spec in errors.CATALOGUE.values())


def test_byok_messages_use_the_product_page_words() -> None:
    assert "Paste it without quotes" in errors.KEY_INVALID.message
    assert "sk-ant-" in errors.KEY_INVALID.message and "sk-proj-" in errors.KEY_INVALID.message
    assert "Wait or upgrade your tier with the provider" in errors.KEY_RATE_LIMITED.message
    assert "top up your provider account" in errors.KEY_QUOTA_EXHAUSTED.message.lower()
    assert "hi@niyra.ai" in errors.APEX_NOT_ENABLED.message


def test_unknown_api_route_with_a_session_is_json_404_for_any_method(user: Any) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.delete("/api/keys/not a slug")

    assert_error(response, 404, "not_found")


def test_csrf_failure_on_the_api_is_json(user: Any) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post("/api/tokens/create", {"name": "x"}, content_type="application/json")

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def test_a_number_is_not_a_token_name(api_client: APIClient, user: Any) -> None:
    api_client.force_authenticate(user)

    response = api_client.post("/api/tokens/create", {"name": 0}, format="json")

    assert_error(response, 400, "invalid_input")
