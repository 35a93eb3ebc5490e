"""REST: /api/keys — list, PUT (add/rotate), POST …/test, DELETE (disconnect)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.services import api_token_create
from byok.models import KeyStatus, ProviderKey, provider_key_purpose
from core import errors
from core.crypto import Keyring, generate_key_spec, get_keyring
from sandbox import SandboxServer, anthropic_key, openai_key

pytestmark = pytest.mark.django_db

OUTPUT_FIELDS = {
    "provider",
    "status",
    "hint",
    "fingerprint",
    "last_tested_at",
    "last_checked_at",
    "next_check_at",
    "last_used_at",
    "rate_limited_until",
    "last_error",
    "checks",
    "created_at",
    "updated_at",
}


def put(client: APIClient, provider: str, key: Any) -> Any:
    return client.put(f"/api/keys/{provider}", {"key": key}, format="json")


def assert_error(response: Any, spec: errors.ErrorSpec) -> dict[str, Any]:
    body = response.json()
    assert (response.status_code, body["code"], body["message"]) == (spec.status, spec.code, spec.message), body
    return body


def test_everything_needs_a_signed_in_user(api_client: APIClient) -> None:
    assert api_client.get("/api/keys").status_code == 401
    assert put(api_client, "anthropic", anthropic_key()).status_code == 401
    assert api_client.post("/api/keys/anthropic/test").status_code == 401
    assert api_client.delete("/api/keys/anthropic").status_code == 401


def test_add_list_test_rotate_disconnect(pro_client: APIClient, sandbox: SandboxServer) -> None:
    assert pro_client.get("/api/keys").json() == []
    key = anthropic_key()

    added = put(pro_client, "anthropic", key)
    assert added.status_code == 200, added.json()
    assert set(added.json()) == OUTPUT_FIELDS
    assert added.json()["status"] == "valid" and added.json()["last_error"] is None
    assert added.json()["hint"] == f"sk-ant-…{key[-4:]}"
    assert added["Cache-Control"] == "no-store"

    [listed] = pro_client.get("/api/keys").json()
    assert set(listed) == OUTPUT_FIELDS and listed["provider"] == "anthropic"

    tested = pro_client.post("/api/keys/anthropic/test")
    assert tested.status_code == 200 and tested.json()["status"] == "valid"
    assert sandbox.log.count(key=key) == 2

    new_key = anthropic_key()
    rotated = put(pro_client, "anthropic", new_key)
    assert rotated.json()["hint"] == f"sk-ant-…{new_key[-4:]}"
    assert len(pro_client.get("/api/keys").json()) == 1

    assert pro_client.delete("/api/keys/anthropic").status_code == 204
    assert pro_client.get("/api/keys").json() == []
    assert_error(pro_client.delete("/api/keys/anthropic"), errors.KEY_NOT_FOUND)


def test_one_key_per_provider_two_providers(pro_client: APIClient) -> None:
    put(pro_client, "anthropic", anthropic_key())
    put(pro_client, "openai", openai_key())
    put(pro_client, "openai", openai_key())
    assert [k["provider"] for k in pro_client.get("/api/keys").json()] == ["anthropic", "openai"]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_key_the_provider_rejects_gets_the_page_words(provider: str, pro_client: APIClient) -> None:
    key = (anthropic_key if provider == "anthropic" else openai_key)("invalid")
    body = assert_error(put(pro_client, provider, key), errors.KEY_INVALID)
    assert "Paste it without quotes" in body["message"]
    assert pro_client.get("/api/keys").json() == []


def test_a_quoted_key_with_a_newline_is_accepted(pro_client: APIClient) -> None:
    assert put(pro_client, "openai", f'"{openai_key()}"\n').json()["status"] == "valid"


@pytest.mark.parametrize(
    ("word", "spec", "status"),
    [
        ("ratelimit", errors.KEY_RATE_LIMITED, "rate_limited"),
        ("noquota", errors.KEY_QUOTA_EXHAUSTED, "quota_exhausted"),
    ],
)
def test_rate_limited_and_out_of_quota_keys_are_stored_and_the_user_is_told(
    word: str, spec: errors.ErrorSpec, status: str, pro_client: APIClient
) -> None:
    response = put(pro_client, "openai", openai_key(word))
    assert response.status_code == 200
    assert response.json()["status"] == status
    assert response.json()["last_error"] == {"code": spec.code, "message": spec.message}
    assert pro_client.get("/api/keys").json()[0]["last_error"]["code"] == spec.code


def test_rate_limited_words_come_from_the_product_page(pro_client: APIClient) -> None:
    message = put(pro_client, "anthropic", anthropic_key("ratelimit")).json()["last_error"]["message"]
    assert "Rate limited" in message and "Wait or upgrade your tier with the provider" in message
    message = put(pro_client, "openai", openai_key("noquota")).json()["last_error"]["message"]
    assert "Quota exhausted" in message and "top up your provider account" in message.lower()


KEY_CHECK_UNAVAILABLE = "Couldn't reach {} to check the key. Your saved key, if any, is unchanged. Try again."


def assert_unavailable(response: Any, provider_label: str) -> dict[str, Any]:
    """The outage's code and status, in words that fit a key check: saving never charges."""
    body = response.json()
    spec = errors.PROVIDER_UNAVAILABLE
    assert (response.status_code, body["code"]) == (spec.status, spec.code), body
    assert body["message"] == KEY_CHECK_UNAVAILABLE.format(provider_label)
    assert "charged" not in body["message"]
    return body


def test_provider_unreachable(pro_client: APIClient, settings: Any) -> None:
    settings.PROVIDER_VALIDATION_TIMEOUT_SECONDS = 0.5
    # Was the routed calls' "Couldn't reach the provider, try again. Nothing was charged."
    assert_unavailable(put(pro_client, "anthropic", anthropic_key("hang")), "Anthropic")


@pytest.mark.parametrize("pasted", ["", "   ", "\n\t ", '""', "' '"])
def test_an_empty_paste_is_a_missing_key_whatever_surrounds_it(
    pasted: str, pro_client: APIClient, sandbox: SandboxServer
) -> None:
    """One answer for nothing pasted: invalid_input (a missing key), never key_invalid."""
    response = put(pro_client, "anthropic", pasted)

    assert response.status_code == 400
    message = "Paste your Anthropic key into the field."
    assert response.json() == {"code": "invalid_input", "message": message, "detail": {"key": [message]}}
    assert not ProviderKey.objects.exists()
    assert len(sandbox.log) == 0


def test_a_key_for_the_other_provider_names_it(pro_client: APIClient) -> None:
    response = put(pro_client, "openai", anthropic_key())
    assert response.status_code == 400
    assert response.json()["code"] == "key_wrong_provider" and "Anthropic" in response.json()["message"]
    response = put(pro_client, "anthropic", openai_key())
    assert response.json()["code"] == "key_wrong_provider" and "OpenAI" in response.json()["message"]


def test_plan_without_byok(make_plan_user: Callable[..., Any], client_for: Callable[[Any], APIClient]) -> None:
    client = client_for(make_plan_user("free"))
    body = assert_error(put(client, "anthropic", anthropic_key()), errors.PLAN_NO_BYOK)
    assert "BYOK is available on Pro and Alpha plans" in body["message"]


@pytest.mark.parametrize("provider", ["together", "groq", "mistral"])
def test_third_party_providers(provider: str, pro_client: APIClient) -> None:
    assert_error(put(pro_client, provider, anthropic_key()), errors.THIRD_PARTY_PROVIDER)
    assert_error(pro_client.post(f"/api/keys/{provider}/test"), errors.THIRD_PARTY_PROVIDER)
    assert_error(pro_client.delete(f"/api/keys/{provider}"), errors.THIRD_PARTY_PROVIDER)


def test_a_key_in_the_url_is_not_echoed(pro_client: APIClient) -> None:
    key = anthropic_key()
    response = put(pro_client, key, key)
    assert response.status_code == 400 and key not in response.content.decode()


@pytest.mark.parametrize("body", [{}, {"key": ""}, {"key": None}, {"key": ["sk-ant-x"]}, {"key": "x" * 5000}])
def test_bad_bodies_are_invalid_input(body: dict[str, Any], pro_client: APIClient, sandbox: SandboxServer) -> None:
    response = pro_client.put("/api/keys/anthropic", body, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid_input"
    assert len(sandbox.log) == 0


def test_json_only(pro_client: APIClient) -> None:
    response = pro_client.put("/api/keys/anthropic", "key=sk-ant-x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def test_test_key_results(pro_user: Any, pro_client: APIClient) -> None:
    ProviderKey.objects.create(
        user=pro_user,
        provider="anthropic",
        ciphertext=Keyring.parse(generate_key_spec("k1")).encrypt("x", purpose="p"),
        encryption_key_id="k1",
        hint="sk-ant-…dead",
        fingerprint="0" * 16,
        status=KeyStatus.VALID,
    )
    put(pro_client, "openai", openai_key())
    ProviderKey.objects.filter(provider="openai").update(status=KeyStatus.INVALID, last_error_code="key_invalid")

    listed = {k["provider"]: k for k in pro_client.get("/api/keys").json()}
    assert listed["anthropic"]["status"] == "needs_reentry"
    assert listed["anthropic"]["last_error"]["code"] == "key_needs_reentry"
    assert listed["openai"]["last_error"]["message"] == errors.KEY_INVALID.message

    assert_error(pro_client.post("/api/keys/anthropic/test"), errors.KEY_NEEDS_REENTRY)
    assert pro_client.post("/api/keys/openai/test").json()["status"] == "valid"


def test_test_key_reports_an_invalid_key(pro_user: Any, pro_client: APIClient) -> None:
    key = anthropic_key("invalid")
    ProviderKey.objects.create(
        user=pro_user,
        provider="anthropic",
        ciphertext=get_keyring().encrypt(key, purpose=provider_key_purpose(user_id=pro_user.pk, provider="anthropic")),
        encryption_key_id=get_keyring().primary_kid,
        hint="sk-ant-…" + key[-4:],
        fingerprint="0" * 16,
    )
    response = pro_client.post("/api/keys/anthropic/test")
    assert response.status_code == 200
    assert response.json()["status"] == "invalid"
    assert response.json()["last_error"] == {"code": "key_invalid", "message": errors.KEY_INVALID.message}


def test_test_key_when_the_provider_is_down(pro_client: APIClient, pro_user: Any) -> None:
    put(pro_client, "openai", openai_key())
    purpose = provider_key_purpose(user_id=pro_user.pk, provider="openai")
    ProviderKey.objects.filter(user=pro_user).update(
        ciphertext=get_keyring().encrypt(openai_key("error"), purpose=purpose)
    )
    assert_unavailable(pro_client.post("/api/keys/openai/test"), "OpenAI")


def test_test_key_without_a_key(pro_client: APIClient) -> None:
    assert_error(pro_client.post("/api/keys/anthropic/test"), errors.KEY_NOT_FOUND)


def test_api_token_auth(pro_user: Any, api_client: APIClient) -> None:
    issued = api_token_create(user=pro_user, name="cli")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    assert put(api_client, "anthropic", anthropic_key()).status_code == 200
    assert len(api_client.get("/api/keys").json()) == 1


# --- one user cannot touch another's keys ---------------------------------------------------


def test_another_user_can_neither_see_nor_change_my_keys(
    pro_user: Any, pro_client: APIClient, make_plan_user: Callable[..., Any], client_for: Callable[[Any], APIClient],
    sandbox: SandboxServer,
) -> None:  # fmt: skip
    put(pro_client, "anthropic", anthropic_key())
    mine_before = ProviderKey.objects.values().get(user=pro_user)
    mallory = client_for(make_plan_user("pro"))
    sandbox.log.clear()

    assert mallory.get("/api/keys").json() == []
    assert_error(mallory.post("/api/keys/anthropic/test"), errors.KEY_NOT_FOUND)
    assert_error(mallory.delete("/api/keys/anthropic"), errors.KEY_NOT_FOUND)
    assert put(mallory, "anthropic", anthropic_key()).status_code == 200  # her own key, not mine

    mine_after = ProviderKey.objects.values().get(user=pro_user)
    assert {k: bytes(v) if isinstance(v, memoryview) else v for k, v in mine_after.items()} == {
        k: bytes(v) if isinstance(v, memoryview) else v for k, v in mine_before.items()
    }
    assert ProviderKey.objects.count() == 2
    assert sandbox.log.count(api="anthropic") == 1  # only her save's probe
    assert [k["hint"] for k in pro_client.get("/api/keys").json()] == [mine_before["hint"]]


# --- throttles -------------------------------------------------------------------------------


def test_save_and_test_are_throttled_per_user(
    pro_client: APIClient, make_plan_user: Callable[..., Any], client_for: Callable[[Any], APIClient],
    sandbox: SandboxServer,
) -> None:  # fmt: skip
    rates = {"byok_save": "2/min", "byok_test": "1/min"}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}):
        _exercise_throttles(pro_client, make_plan_user, client_for, sandbox)


def _exercise_throttles(
    pro_client: APIClient, make_plan_user: Callable[..., Any], client_for: Callable[[Any], APIClient],
    sandbox: SandboxServer,
) -> None:  # fmt: skip
    assert put(pro_client, "anthropic", anthropic_key()).status_code == 200
    assert put(pro_client, "anthropic", "sk-ant-bad").status_code == 400  # never reached the provider: free
    assert put(pro_client, "anthropic", anthropic_key()).status_code == 200
    throttled = put(pro_client, "anthropic", anthropic_key())
    assert throttled.status_code == 429 and throttled.json()["code"] == "throttled"
    assert int(throttled["Retry-After"]) > 0
    assert throttled.json()["message"] == "Too many requests. Try again in about a minute."

    assert pro_client.post("/api/keys/anthropic/test").status_code == 200
    assert pro_client.post("/api/keys/anthropic/test").status_code == 429
    assert sandbox.log.count(api="anthropic") == 3  # throttled requests never reach the provider

    assert pro_client.get("/api/keys").status_code == 200  # listing is not throttled
    other = client_for(make_plan_user("pro"))
    assert put(other, "anthropic", anthropic_key()).status_code == 200  # per user, not global
    assert pro_client.delete("/api/keys/anthropic").status_code == 204  # disconnecting is never throttled


def test_throttles_have_safe_defaults_when_settings_name_no_rate(pro_client: APIClient) -> None:
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {}}):
        bad = [put(pro_client, "anthropic", "sk-ant-bad").status_code for _ in range(11)]
        real = [put(pro_client, "anthropic", anthropic_key()).status_code for _ in range(11)]
    assert bad == [400] * 11  # malformed: refused before the provider, so no budget spent
    assert real == [200] * 10 + [429]  # 10 probes an hour


def test_the_schema_documents_no_key_on_output(api_client: APIClient, pro_user: Any) -> None:
    api_client.force_authenticate(pro_user)
    response = api_client.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    output = schema["components"]["schemas"]["ProviderKeyOutput"]["properties"]
    assert "key" not in output and "ciphertext" not in output
    assert "/api/keys/{provider}" in schema["paths"]
