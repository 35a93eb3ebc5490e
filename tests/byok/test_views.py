"""Dashboard Settings → BYOK and Connections: cards per provider, keys validated by the sandbox
through the real SDKs, errors in place with the product page's troubleshooting text, and the key
never echoed back, logged or kept."""

from __future__ import annotations

import logging
from collections.abc import Callable
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from accounts.models import AuditEvent
from byok.models import KeyStatus, ProviderKey
from byok.services import provider_key_disconnect
from byok.views import MAX_PASTE_LENGTH
from core.pages import KEY_INVALID_HELP, SESSION_ENDED
from credits.models import BillingAccount
from sandbox import SandboxServer, anthropic_key, openai_key

pytestmark = pytest.mark.django_db

PAGE = "/settings/byok/"
HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_CURRENT_URL": "http://testserver/settings/byok/"}


def save(client: Client, provider: str, key: str, **extra: Any) -> Any:
    return client.post(f"/settings/byok/{provider}/save", {"key": key}, **extra)


@pytest.fixture
def pro_browser(pro_user: Any) -> Client:
    client = Client()
    client.force_login(pro_user)
    return client


def test_page_has_a_card_per_provider_with_a_password_field(pro_browser: Client) -> None:
    response = pro_browser.get(PAGE)

    assert response.status_code == 200
    html = response.content.decode()
    for provider in ("anthropic", "openai"):
        assert f'id="card-{provider}"' in html
        assert f'<input type="password" id="key-{provider}" name="key" value=""' in html
        assert f'<label for="key-{provider}">' in html
    assert html.count("Not connected") == 2
    assert "csrfmiddlewaretoken" in html
    assert response["Cache-Control"] == "no-store"


def test_key_wrapped_in_quotes_is_saved_validated_and_never_echoed(
    pro_browser: Client, pro_user: Any, sandbox: SandboxServer
) -> None:
    key = anthropic_key()

    response = save(pro_browser, "anthropic", f' "{key}"\n', **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    stored = ProviderKey.objects.get(user=pro_user, provider="anthropic")
    assert stored.status == KeyStatus.VALID
    assert stored.hint in html
    assert "Valid" in html
    assert "Key saved and validated" in html
    assert key not in html and key[-12:] not in html  # not even in the (always empty) field
    assert "<h1>" not in html and 'id="key-cards"' in html  # htmx gets the cards, not the page
    assert len(sandbox.log.records()) == 1  # one validation round trip


def test_an_action_on_one_card_shows_the_other_cards_as_they_are_now(pro_browser: Client) -> None:
    # Given an error on the Anthropic card (a paste that is no key)
    failed = save(pro_browser, "anthropic", "not-a-key", **HTMX).content.decode()
    assert 'id="card-anthropic-error"' in failed

    # When a key is saved on the OpenAI card
    html = save(pro_browser, "openai", openai_key(), **HTMX).content.decode()

    # Then htmx gets every card: OpenAI's with what just happened, Anthropic's without the old error
    anthropic, _, openai = html.partition('id="card-openai"')
    assert 'id="card-anthropic"' in anthropic and 'id="card-anthropic-error"' not in anthropic
    assert "Key invalid" not in anthropic and "Not connected" in anthropic
    assert "Key saved and validated" in openai


def test_without_javascript_a_save_redirects_with_a_message(pro_browser: Client, pro_user: Any) -> None:
    response = save(pro_browser, "anthropic", anthropic_key(), follow=True)

    assert response.redirect_chain == [(PAGE, 302)]
    assert b"Anthropic: Key saved and validated" in response.content
    assert ProviderKey.objects.filter(user=pro_user).count() == 1


def test_invalid_key_shows_key_invalid_with_help_and_keeps_the_old_key(pro_browser: Client, pro_user: Any) -> None:
    save(pro_browser, "anthropic", anthropic_key())
    old = ProviderKey.objects.get(user=pro_user)
    bad = anthropic_key("invalid")

    response = save(pro_browser, "anthropic", bad, **HTMX)

    html = response.content.decode()
    assert response.status_code == 200
    assert "Key invalid" in html
    assert KEY_INVALID_HELP in html
    assert 'aria-invalid="true"' in html and 'aria-describedby="key-anthropic-hint card-anthropic-error"' in html
    assert old.hint in html  # the old key stays, and is shown
    assert bad not in html and bad[-4:] not in html
    current = ProviderKey.objects.get(user=pro_user)
    assert (current.fingerprint, current.status) == (old.fingerprint, KeyStatus.VALID)


def test_badly_formatted_key_fails_without_a_provider_call(pro_browser: Client, sandbox: SandboxServer) -> None:
    response = save(pro_browser, "anthropic", "hello there", **HTMX)

    assert "Key invalid" in response.content.decode()
    assert sandbox.log.records() == []


def test_key_for_the_other_provider_names_the_right_one(pro_browser: Client) -> None:
    response = save(pro_browser, "anthropic", openai_key(), **HTMX)

    html = response.content.decode()
    assert "That looks like an OpenAI key" in html
    assert KEY_INVALID_HELP in html  # the page's troubleshooting text, next to the error


@pytest.mark.parametrize(
    ("pasted", "expected"),
    # Quotes alone were key_invalid here ("Paste it without quotes"); now the same as nothing.
    [
        ("", "Paste your OpenAI key into the field."),
        ("   \n", "Paste your OpenAI key into the field."),
        ('""', "Paste your OpenAI key into the field."),
    ],
)
def test_empty_paste_asks_for_a_key(pro_browser: Client, pasted: str, expected: str) -> None:
    response = save(pro_browser, "openai", pasted, **HTMX)

    assert response.status_code == 200
    assert expected in response.content.decode()
    assert not ProviderKey.objects.exists()


def test_a_hung_provider_says_the_saved_key_is_unchanged_not_that_nothing_was_charged(
    pro_browser: Client, settings: Any
) -> None:
    settings.PROVIDER_VALIDATION_TIMEOUT_SECONDS = 0.5

    html = unescape(save(pro_browser, "openai", openai_key("hang"), **HTMX).content.decode())

    assert "Couldn't reach OpenAI to check the key. Your saved key, if any, is unchanged. Try again." in html
    assert "Nothing was charged" not in html
    assert not ProviderKey.objects.exists()


def test_huge_paste_is_key_invalid_not_a_500(pro_browser: Client, sandbox: SandboxServer) -> None:
    huge = "sk-ant-" + "A" * (MAX_PASTE_LENGTH + 10)

    response = save(pro_browser, "anthropic", huge, **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert "Key invalid" in html
    assert "AAAAAAAA" not in html
    assert sandbox.log.records() == []


def test_rate_limited_key_is_stored_and_the_card_says_what_to_do(pro_browser: Client, pro_user: Any) -> None:
    response = save(pro_browser, "openai", openai_key("ratelimit"), **HTMX)

    html = response.content.decode()
    assert ProviderKey.objects.get(user=pro_user).status == KeyStatus.RATE_LIMITED
    assert "Rate limited" in html
    assert "Your vendor limit was hit. Wait or upgrade your tier with the provider." in html


def test_quota_exhausted_shows_top_up(pro_browser: Client) -> None:
    html = save(pro_browser, "anthropic", anthropic_key("noquota"), **HTMX).content.decode()

    assert "Quota exhausted" in html
    assert "Top up your provider account." in html


def test_test_key_records_last_tested(pro_browser: Client, pro_user: Any) -> None:
    save(pro_browser, "anthropic", anthropic_key())
    ProviderKey.objects.filter(user=pro_user).update(last_tested_at=None)

    response = pro_browser.post("/settings/byok/anthropic/test", **HTMX)

    html = response.content.decode()
    assert "Key works" in html
    assert ProviderKey.objects.get(user=pro_user).last_tested_at is not None
    assert "<dd>never</dd>" not in html and "(just now)" in html


def test_test_after_another_tab_disconnected_says_so(pro_browser: Client, pro_user: Any) -> None:
    save(pro_browser, "anthropic", anthropic_key())
    provider_key_disconnect(user=pro_user, provider="anthropic")  # the other tab

    response = pro_browser.post("/settings/byok/anthropic/test", **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert "No key is connected for this provider." in html
    assert "Not connected" in html


def test_disconnect_asks_first_then_disconnects_once(pro_browser: Client, pro_user: Any) -> None:
    save(pro_browser, "anthropic", anthropic_key())
    url = "/settings/byok/anthropic/disconnect"

    confirm = pro_browser.get(url, **HTMX)
    assert "Yes, disconnect" in confirm.content.decode()
    assert ProviderKey.objects.filter(user=pro_user).exists()

    done = pro_browser.post(url, **HTMX)
    assert "Disconnected. Niyra reverts to the credit pool" in done.content.decode()
    assert not ProviderKey.objects.filter(user=pro_user).exists()

    again = pro_browser.post(url, **HTMX)  # a double click, or a stale page
    assert again.status_code == 200
    assert "No key is connected for this provider." in again.content.decode()
    assert AuditEvent.objects.filter(event="provider_key.disconnected", subject=pro_user).count() == 1


def test_disconnect_without_javascript_confirms_on_a_page(pro_browser: Client) -> None:
    save(pro_browser, "anthropic", anthropic_key())

    page = pro_browser.get("/settings/byok/anthropic/disconnect")
    assert page.status_code == 200
    assert b"<html" in page.content and b"Yes, disconnect" in page.content

    response = pro_browser.post("/settings/byok/anthropic/disconnect", follow=True)
    assert b"Anthropic: Disconnected" in response.content


def test_free_plan_sees_why_and_cannot_add_a_key(make_plan_user: Callable[..., Any], sandbox: SandboxServer) -> None:
    free = make_plan_user("free", "free@example.com")
    client = Client()
    client.force_login(free)

    page = client.get(PAGE).content.decode()
    assert "BYOK is available on Pro and Alpha plans." in page
    assert 'type="password"' not in page

    response = save(client, "anthropic", anthropic_key(), **HTMX)
    assert "BYOK is available on Pro and Alpha plans." in response.content.decode()
    assert not ProviderKey.objects.filter(user=free).exists()
    assert sandbox.log.records() == []


def test_downgraded_user_with_a_key_can_only_disconnect(pro_browser: Client, pro_user: Any) -> None:
    save(pro_browser, "anthropic", anthropic_key())
    BillingAccount.objects.filter(user=pro_user).update(plan="free")

    html = unescape(pro_browser.get(PAGE).content.decode())

    assert "so your saved key can't be used" in html
    assert "Disconnect" in html
    assert "Test key" not in html


def test_apex_is_alpha_gated_without_the_entitlement(pro_browser: Client, pro_user: Any) -> None:
    html = pro_browser.get(PAGE).content.decode()
    assert "Apex is alpha-gated — email" in html and "hi@niyra.ai" in html

    BillingAccount.objects.filter(user=pro_user).update(apex_enabled=True)
    html = pro_browser.get(PAGE).content.decode()
    assert "alpha-gated" not in html
    assert "Apex (Claude Opus 4 tier) is BYOK-only" in html


def test_unknown_provider_is_404(pro_browser: Client) -> None:
    assert pro_browser.post("/settings/byok/groq/save", {"key": "sk-whatever"}).status_code == 404


def test_forms_need_a_csrf_token(pro_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(pro_user)

    response = save(client, "anthropic", anthropic_key())

    assert response.status_code == 403
    assert not ProviderKey.objects.exists()


def test_expired_session_htmx_action_redirects_to_sign_in_and_back(client: Client) -> None:
    response = save(client, "anthropic", anthropic_key(), **HTMX)

    assert response.status_code == 200
    target = urlsplit(response["HX-Redirect"])
    assert target.path == "/login/"
    assert parse_qs(target.query)["next"] == [PAGE]
    login_page = client.get(response["HX-Redirect"])
    assert SESSION_ENDED in login_page.content.decode()


def test_expired_session_plain_post_goes_back_to_the_page(client: Client) -> None:
    response = save(client, "anthropic", anthropic_key())

    assert response.status_code == 302
    assert parse_qs(urlsplit(response["Location"]).query)["next"] == [PAGE]


def test_saves_are_throttled_with_the_api_budget(pro_browser: Client, settings: Any) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"byok_save": "2/hour"}}
    for _ in range(2):
        save(pro_browser, "anthropic", anthropic_key("invalid"), **HTMX)  # reached the provider: counted

    response = save(pro_browser, "anthropic", anthropic_key(), **HTMX)

    assert "Too many requests" in response.content.decode()
    assert "Try again in about an hour." in response.content.decode()
    assert not ProviderKey.objects.exists()


def test_the_pasted_key_is_never_logged(pro_browser: Client, caplog: pytest.LogCaptureFixture) -> None:
    keys = [anthropic_key(), anthropic_key("invalid"), anthropic_key("ratelimit")]
    with caplog.at_level(logging.DEBUG):
        for key in keys:
            save(pro_browser, "anthropic", key, **HTMX)
        save(pro_browser, "openai", keys[0], **HTMX)  # wrong provider

    for key in keys:
        assert key not in caplog.text
        assert key.split("-")[-1] not in caplog.text


def test_error_reports_show_the_pasted_key_as_stars(pro_user: Any) -> None:
    from django.contrib.sessions.backends.cache import SessionStore
    from django.test import RequestFactory
    from django.views.debug import ExceptionReporter

    from byok.views import byok_key_save

    key = anthropic_key("invalid")
    request = RequestFactory().post("/settings/byok/anthropic/save", {"key": key}, headers={"HX-Request": "true"})
    request.user = pro_user
    request.session = SessionStore()
    request.htmx = True  # type: ignore[attr-defined]

    byok_key_save(request, provider="anthropic")

    report = ExceptionReporter(request, ValueError, ValueError("boom"), None).get_traceback_text()
    assert key not in report
    assert "'key': '********************'" in report or "key = '********************'" in report
