"""The dashboard in a real browser (headless Chromium), against the live server and the provider
sandbox: what a user does from the product page, and what support does in the admin.

Every page visited is checked for console errors and saved as a screenshot (see conftest).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Any

import pytest

from accounts.models import ApiToken
from accounts.support import support_group_sync
from byok.keytext import key_hint
from byok.models import KeyStatus, ProviderKey
from core.pages import KEY_INVALID_HELP
from credits.models import BillingAccount
from credits.services.ledger import credit_charge
from routing.models import RoutedCall
from sandbox import anthropic_key

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest skips these tests (or fails them, with NIYRA_REQUIRE_BROWSER=1)
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _send(tab: Any, model: str, prompt: str) -> Any:
    page = tab.page
    page.get_by_label("Model").select_option(model)
    page.get_by_label("Message", exact=True).fill(prompt)
    page.get_by_role("button", name="Send").click()
    result = page.get_by_test_id("try-result")
    expect(result).to_be_visible()
    tab.assert_clean()
    return result


def test_byok_key_lifecycle_and_who_pays(open_tab: Callable[[], Any], make_customer: Callable[..., Any]) -> None:
    user = make_customer(plan="pro", credits_mc=50_000)
    tab = open_tab()
    page = tab.page
    tab.login(user.email)
    tab.shot("home-new")

    # Add: pasted wrapped in quotes (and submitted from the keyboard), validated by the provider.
    tab.goto("/settings/byok/")
    card = page.get_by_test_id("card-anthropic")
    key = anthropic_key()
    field = card.get_by_label("Paste your Anthropic key")
    field.fill(f'"{key}"')
    field.press("Enter")
    expect(card.get_by_test_id("status")).to_have_text("Valid")
    expect(card.get_by_test_id("hint")).to_have_text(key_hint(provider="anthropic", key=key))
    expect(card.get_by_role("status")).to_contain_text("Key saved and validated")
    expect(card.locator("input[type=password]")).to_have_value("")
    assert key not in page.content()
    tab.assert_clean()

    # Rotate to an invalid key: "Key invalid" with the help text; the old key stays.
    card.get_by_label("Paste a new key to rotate").fill(anthropic_key("invalid"))
    card.get_by_role("button", name="Save new key").click()
    expect(card.get_by_role("alert")).to_contain_text("Key invalid")
    expect(card.get_by_role("alert")).to_contain_text(KEY_INVALID_HELP)
    expect(card.get_by_test_id("status")).to_have_text("Valid")
    expect(card.get_by_test_id("hint")).to_have_text(key_hint(provider="anthropic", key=key))
    expect(card.locator("input[type=password]")).to_have_value("")
    expect(card.locator("input[type=password]")).to_be_focused()
    tab.shot("byok-invalid-key")

    # Test key.
    card.get_by_role("button", name="Test key").click()
    expect(card.get_by_role("status")).to_contain_text("Key works")
    tab.shot("byok")
    assert ProviderKey.objects.get(user=user).status == KeyStatus.VALID

    # A message goes through the key: zero credits.
    tab.goto("/try/")
    result = _send(tab, "claude-haiku-4-5", "Say hello")
    expect(result.get_by_test_id("served-by")).to_contain_text("your Anthropic key")
    expect(result.get_by_test_id("served-by")).to_contain_text(key_hint(provider="anthropic", key=key))
    expect(result.get_by_test_id("cost")).to_contain_text("0.000 credits")
    tab.shot("try-on-your-key")

    # Disconnect, confirming from the keyboard (focus lands on the confirmation).
    tab.goto("/settings/byok/")
    card.get_by_role("link", name="Disconnect").focus()
    page.keyboard.press("Enter")
    confirm = card.get_by_role("button", name="Yes, disconnect")
    expect(confirm).to_be_focused()
    tab.shot("byok-confirm-disconnect")
    page.keyboard.press("Enter")
    expect(card.get_by_test_id("status")).to_have_text("Not connected")
    expect(card.get_by_role("status")).to_contain_text("Niyra reverts to the credit pool")
    assert not ProviderKey.objects.filter(user=user).exists()

    # The next message is charged in credits.
    tab.goto("/try/")
    result = _send(tab, "claude-haiku-4-5", "Say hello again")
    expect(result.get_by_test_id("served-by")).to_contain_text("Niyra credits")
    expect(result.get_by_test_id("cost")).not_to_contain_text("0.000 credits")
    tab.shot("try-on-credits")
    charged = RoutedCall.objects.get(user=user, key_source="platform").credits_charged
    assert charged > 0
    assert BillingAccount.objects.get(user=user).available == 50_000 - charged

    # Home: recent calls say which key served each, and the spend chart draws.
    credit_charge(user=user, category="embeddings", units=20_000, idempotency_key="e2e-embeddings")
    tab.goto("/")
    calls = page.get_by_role("table").filter(has_text="Key used")
    expect(calls).to_contain_text("Your Anthropic key")
    expect(calls).to_contain_text("Niyra credits")
    expect(page.locator("#spend-chart")).to_be_visible()
    assert page.evaluate("() => typeof window.Chart === 'function' && !!window.Chart.getChart('spend-chart')")
    tab.shot("home")


def test_free_plan_cannot_add_a_key(open_tab: Callable[[], Any], make_customer: Callable[..., Any]) -> None:
    user = make_customer(plan="free", credits_mc=0)
    tab = open_tab()
    tab.login(user.email)

    tab.goto("/settings/byok/")

    page = tab.page
    expect(page.get_by_test_id("plan-no-byok")).to_contain_text("BYOK is available on Pro and Alpha plans.")
    expect(page.locator("input[type=password]")).to_have_count(0)
    expect(page.get_by_test_id("apex")).to_contain_text("Apex is alpha-gated — email hi@niyra.ai for access.")
    tab.shot("byok-free-plan")


def test_api_tokens_and_the_ledger(open_tab: Callable[[], Any], make_customer: Callable[..., Any]) -> None:
    user = make_customer(plan="pro", credits_mc=100_000)
    credit_charge(user=user, category="embeddings", units=50_000, idempotency_key="emb-1")
    credit_charge(user=user, category="tool_call", units=4, idempotency_key="tool-1")
    tab = open_tab()
    page = tab.page
    tab.login(user.email)

    # Create a token: shown once.
    tab.goto("/settings/tokens/")
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    issued = page.locator("#issued-token")
    expect(issued).to_have_text(re.compile(r"^niy_[0-9a-f]{8}_\S+$"))
    plaintext = issued.inner_text()
    tab.shot("tokens-created")
    token = ApiToken.objects.get(user=user)
    tab.goto("/settings/tokens/")
    assert plaintext not in page.content()
    expect(page.get_by_test_id(f"token-{token.prefix}")).to_contain_text(f"niy_{token.prefix}_…")

    # Revoke it, with a confirmation.
    page.get_by_role("link", name="Revoke laptop").click()
    page.get_by_role("button", name="Yes, revoke").click()
    expect(page.get_by_test_id(f"token-{token.prefix}")).to_contain_text("Revoked")
    tab.shot("tokens")
    token.refresh_from_db()
    assert token.revoked_at is not None

    # The ledger: filter by category (in place, the URL follows), then by date, then export.
    tab.goto("/credits/")
    count = page.get_by_test_id("ledger-count")
    expect(count).to_have_text("3 entries")
    page.get_by_label("Category").select_option("embeddings")
    expect(count).to_have_text("1 entry matches these filters")
    expect(page).to_have_url(re.compile(r"category=embeddings"))
    expect(page.get_by_test_id("ledger")).to_contain_text("Embeddings")
    expect(page.get_by_test_id("ledger")).not_to_contain_text("Tool calls")
    tab.assert_clean()
    tab.shot("credits-filtered")

    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    rows = list(csv.reader(io.StringIO(download.value.path().read_text())))
    assert [row[1] for row in rows[1:]] == ["embeddings"]

    page.get_by_label("From (UTC)").fill("2099-01-01")
    page.get_by_label("From (UTC)").press("Enter")
    expect(count).to_have_text("0 entries match these filters")
    tab.goto("/credits/")
    tab.shot("credits")


def test_connect_and_disconnect_an_integration(open_tab: Callable[[], Any], make_customer: Callable[..., Any]) -> None:
    user = make_customer()
    tab = open_tab()
    page = tab.page
    tab.login(user.email)

    tab.goto("/settings/connections/")
    row = page.get_by_test_id("conn-sandbox")
    expect(row.get_by_test_id("status")).to_have_text("Not connected")
    row.get_by_role("button", name="Connect").click()  # the sandbox's consent screen says yes at once
    expect(page.get_by_role("status")).to_contain_text("Provider sandbox is connected.")
    tab.assert_clean()

    tab.goto("/settings/connections/")
    expect(row.get_by_test_id("status")).to_have_text("Active")
    expect(row).to_contain_text("Expires at")
    tab.shot("connections")
    row.get_by_role("link", name="Disconnect").click()
    row.get_by_role("button", name="Yes, disconnect").click()
    expect(row.get_by_test_id("status")).to_have_text("Not connected")
    tab.assert_clean()


def test_support_grants_credits_with_a_reason(open_tab: Callable[[], Any], make_customer: Callable[..., Any]) -> None:
    customer = make_customer(plan="pro", credits_mc=10_000, email="ada@example.com")
    staff = make_customer(plan="free", credits_mc=0, email="support@niyra.ai", is_staff=True)
    staff.groups.add(support_group_sync())

    support = open_tab()
    page = support.page
    support.admin_login(staff.email)
    support.goto("/admin/accounts/user/?q=ada%40")
    page.get_by_role("link", name="ada@example.com").click()
    expect(page.get_by_text("Support overview")).to_be_visible()
    support.shot("admin-user")
    page.get_by_role("link", name=re.compile("Grant or adjust credits")).click()
    page.locator("input[name=_selected_action]").first.check()
    page.locator("select[name=action]").select_option("grant_credits")
    page.get_by_role("button", name="Go").click()
    page.get_by_label("Credits to grant").fill("12.5")
    page.get_by_label("Reason").fill("Sorry about the outage")
    support.shot("admin-grant")
    page.get_by_role("button", name="Grant credits").click()
    expect(page.locator(".messagelist")).to_contain_text("Granted credits: 1 account(s).")
    support.assert_clean()

    user_tab = open_tab()
    user_tab.login(customer.email)
    expect(user_tab.page.get_by_test_id("available")).to_have_text("22.500")
    user_tab.goto("/credits/")
    expect(user_tab.page.get_by_test_id("ledger")).to_contain_text("Sorry about the outage")
