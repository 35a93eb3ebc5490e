"""The Try page and Home's recent calls in a real browser: what runs, what doesn't and why, and
which calls fell back to credits (issue 15, items 8 and 9).

Every page visited is checked for console errors and saved as a screenshot (see conftest).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from byok.models import KeyStatus
from routing.models import RoutedCall
from routing.services import routing_preference_set
from sandbox import anthropic_key
from tests.routing import conftest as routing_conftest

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest skips these tests (or fails them, with NIYRA_REQUIRE_BROWSER=1)
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

store_key = routing_conftest.store_key


def test_without_credits_the_try_page_says_what_to_do(
    open_tab: Callable[[], Any], make_customer: Callable[..., Any]
) -> None:
    user = make_customer(plan="pro", credits_mc=0)
    tab = open_tab()
    page = tab.page
    tab.login(user.email)

    tab.goto("/try/")

    nothing = page.get_by_test_id("nothing-runs")
    expect(nothing).to_contain_text("No credits left: add credits or add your own key in Settings → BYOK.")
    expect(nothing.get_by_role("listitem")).to_have_count(1)  # one reason, not one per model
    expect(nothing.get_by_role("link", name="add your own key")).to_have_attribute("href", "/settings/byok/")
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    tab.shot("try-no-credits")


def test_a_quota_exhausted_key_is_not_the_default_and_home_marks_the_fallback(
    open_tab: Callable[[], Any], make_customer: Callable[..., Any], store_key: Callable[..., Any]
) -> None:
    user = make_customer(plan="pro", credits_mc=50_000)
    # A key saved earlier whose provider account has since run dry (the sandbox's word says so)
    store_key(user, "anthropic", anthropic_key("noquota"), KeyStatus.QUOTA_EXHAUSTED)
    tab = open_tab()
    page = tab.page
    tab.login(user.email)

    # The Try page: the key's models say what is wrong, and the default runs on credits.
    tab.goto("/try/")
    model = page.get_by_label("Model")
    expect(model.locator("option[value='claude-haiku-4-5']")).to_have_text(
        "Claude Haiku 4.5 — your key, quota exhausted"
    )
    expect(model.locator("option:checked")).to_contain_text("— credits")
    expect(page.get_by_test_id("key-warning")).to_contain_text(
        "Your Anthropic key: Quota exhausted — Top up your provider account."
    )
    tab.shot("try-quota-exhausted")

    # Opted in to the fallback: a message on that key is served on credits.
    routing_preference_set(user=user, fallback_to_credits=True)
    tab.goto("/try/")
    expect(page.get_by_test_id("key-warning")).to_contain_text("fall back to credits (you opted in)")
    model.select_option("claude-haiku-4-5")
    page.get_by_label("Message", exact=True).fill("Say hello")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_test_id("served-by")).to_contain_text("Niyra credits")
    tab.assert_clean()
    calls = sorted(RoutedCall.objects.filter(user=user).values_list("key_source", "outcome", "fell_back"))
    assert calls == [("byok", "quota_exhausted", False), ("platform", "ok", True)]

    # Home: the outcome in words, and the call that fell back is marked.
    tab.goto("/")
    table = page.get_by_role("table").filter(has_text="Key used")
    expect(table.get_by_test_id("fell-back")).to_have_text("fell back to credits")
    expect(table).to_contain_text("Quota exhausted")
    expect(table).not_to_contain_text("quota_exhausted")
    tab.shot("home-recent-calls")
