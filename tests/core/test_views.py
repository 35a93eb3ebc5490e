"""Dashboard home: credits (available, reserved), plan, 30-day spend by category (chart data and
its table), LLM share, key status per provider, recent routed calls. And the page chrome:
navigation, static files, no inline scripts."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from byok.keytext import key_fingerprint, key_hint
from byok.models import KeyStatus, ProviderKey, provider_key_purpose
from core.crypto import get_keyring
from core.templatetags.dashboard import percent
from credits.models import BillingAccount
from credits.money import credits_text
from credits.services.holds import credit_hold
from credits.services.ledger import credit_charge, credit_grant
from credits.templatetags.money import credits
from sandbox import SandboxServer, anthropic_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _chart(html: str) -> dict[str, Any]:
    match = re.search(r'<script id="spend-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no chart data"
    return json.loads(match.group(1))


def test_new_user_home(browser: Client) -> None:
    html = browser.get("/").content.decode()

    assert "Available credits" in html and "0.000" in html
    assert "Free" in html
    assert "No credits spent in the last 30 days." in html
    assert "chart.umd.min.js" not in html  # no chart library without data
    assert html.count("Not connected") == 2
    assert "No calls yet." in html


def test_home_shows_balance_reserved_spend_and_share(browser: Client, user: Any) -> None:
    credit_grant(user=user, amount=100_000, reason="test", idempotency_key="g")
    credit_charge(user=user, category="embeddings", units=1_000_000, idempotency_key="e")
    credit_charge(user=user, category="tool_call", units=2, idempotency_key="t")
    credit_hold(user=user, amount=1_500, idempotency_key="h", category="llm")

    html = browser.get("/").content.decode()

    account = BillingAccount.objects.get(user=user)
    assert credits(account.available) in html
    assert "1.500" in html  # reserved
    chart = _chart(html)
    assert chart["labels"][:3] == ["LLM", "Embeddings", "Tool calls"]
    assert chart["labels"] == [
        "LLM",
        "Embeddings",
        "Tool calls",
        "Voice (TTS)",
        "Voice (STT)",
        "Enrichment",
        "Telephony",
    ]
    assert chart["credits"][0] == 0 and chart["credits"][1] > 0
    assert "chart.umd.min.js" in html
    assert 'role="img"' in html
    assert "0%" in html  # LLM share


@pytest.mark.django_db(transaction=True)  # the Try page calls the gateway, which reads on its own connections
def test_home_shows_keys_and_recent_calls(browser: Client, user: Any, settings: Any, sandbox: SandboxServer) -> None:
    settings.ANTHROPIC_BASE_URL = sandbox.anthropic_base_url
    BillingAccount.objects.get_or_create(user=user)
    BillingAccount.objects.filter(user=user).update(plan="pro")
    key = anthropic_key()
    keyring = get_keyring()
    ProviderKey.objects.create(
        user=user,
        provider="anthropic",
        ciphertext=keyring.encrypt(key, purpose=provider_key_purpose(user_id=user.pk, provider="anthropic")),
        encryption_key_id=keyring.primary_kid,
        hint=key_hint(provider="anthropic", key=key),
        fingerprint=key_fingerprint(key),
        status=KeyStatus.VALID,
        last_tested_at=timezone.now(),
    )
    browser.post("/try/", {"model": "claude-haiku-4-5", "prompt": "hi", "max_tokens": "5"})

    html = browser.get("/").content.decode()

    assert key_hint(provider="anthropic", key=key) in html
    assert "Valid" in html
    assert "claude-haiku-4-5" in html and "Your Anthropic key" in html
    assert key not in html


def test_every_page_has_navigation_and_no_inline_script(browser: Client) -> None:
    for url in ("/", "/try/", "/credits/", "/settings/byok/", "/settings/connections/", "/settings/tokens/"):
        html = browser.get(url).content.decode()
        assert 'aria-current="page"' in html, url
        assert "htmx.min.js" in html and "dashboard.css" in html
        assert re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html) is None, url
        assert 'class="skip-link"' in html


def test_pages_need_sign_in(client: Client) -> None:
    for url in ("/", "/try/", "/credits/", "/settings/byok/", "/settings/connections/", "/settings/tokens/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), url


def test_money_filters() -> None:
    assert credits(1_234_567) == "1,234.567"
    assert credits(-1_500) == "\u22121.500"
    assert credits(0) == "0.000"
    assert credits(12_500, "signed") == "+12.500"
    assert credits(-123, "signed") == "\u22120.123"
    assert credits(None) == ""
    # Programs (API fields, CSV) get no separators and a plain minus, from the same function.
    assert credits_text(-1_234_567, for_people=False) == "-1234.567"
    assert credits_text(5, for_people=False) == "0.005"
    assert percent(0.9234) == "92%"
    assert percent(0.001) == "<1%"
    assert percent(0) == "0%"


def test_unknown_page_is_a_friendly_404(browser: Client) -> None:
    response = browser.get("/no-such-page/")

    assert response.status_code == 404
    assert b"Nothing here" in response.content


def test_favicon(client: Client) -> None:
    response = client.get("/favicon.ico")

    assert response.status_code == 301
    assert response["Location"].endswith("dashboard/favicon.svg")
