"""The BYOK health panel: each key card's status, last used, last checked, next check and a
collapsible history of checks (docs/screenshots/byok-health.png)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone

from byok.key_sql import provider_key_used
from byok.models import ProviderKey
from byok.services import provider_key_check, provider_key_observe, provider_key_save
from sandbox import anthropic_key, openai_key

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest skips these tests (or fails them, with NIYRA_REQUIRE_BROWSER=1)
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _off_the_loop(func: Callable[..., Any], **kwargs: Any) -> Any:
    """Run a service that probes a provider from another thread: Playwright's event loop runs in
    this one, and the probe's async_to_sync refuses to run beside it."""

    def run() -> Any:
        try:
            return func(**kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def _observe(key: ProviderKey, observation: str, **extra: Any) -> None:
    provider_key_observe(
        user_id=key.user_id, provider=key.provider, fingerprint=key.fingerprint, observation=observation, **extra
    )


def test_each_key_card_shows_its_health_and_a_history_of_checks(
    open_tab: Callable[[], Any], make_customer: Callable[..., Any]
) -> None:
    user = make_customer(plan="pro")
    secret = anthropic_key()
    anthropic = _off_the_loop(provider_key_save, user=user, provider="anthropic", key=secret)  # "Saved": valid
    _observe(anthropic, "rate_limited", retry_after_seconds=30)  # a routed call met a 429
    ProviderKey.objects.filter(pk=anthropic.pk).update(next_check_at=timezone.now() - timedelta(seconds=1))
    assert _off_the_loop(provider_key_check, key_id=anthropic.pk) == "valid"  # the scheduled check: works again
    used = provider_key_used(user_id=user.pk, provider="anthropic", at=timezone.now() - timedelta(minutes=12))
    with connection.cursor() as cursor:
        cursor.execute(used.sql, used.params)
    openai = _off_the_loop(provider_key_save, user=user, provider="openai", key=openai_key())
    _observe(openai, "invalid")  # the provider rejected it on a routed call

    tab = open_tab()
    page = tab.page
    tab.login(user.email)
    tab.goto("/settings/byok/")

    card = page.get_by_test_id("card-anthropic")
    expect(card.get_by_test_id("status")).to_have_text("Valid")
    expect(card.get_by_test_id("last-used")).to_contain_text("12 minutes ago")
    expect(card.get_by_test_id("last-checked")).to_contain_text("just now")
    expect(card.get_by_test_id("next-check")).to_contain_text("(in 23 hours")
    history = card.get_by_test_id("history")
    expect(history.locator("table")).to_be_hidden()  # collapsed until asked for
    history.get_by_text("Recent checks").click()
    rows = history.locator("tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("Scheduled check")
    expect(rows.nth(0)).to_contain_text("Valid")
    expect(rows.nth(1)).to_contain_text("Routed call")
    expect(rows.nth(1)).to_contain_text("Rate limited")
    expect(rows.nth(2)).to_contain_text("Saved")

    other = page.get_by_test_id("card-openai")
    expect(other.get_by_test_id("status")).to_have_text("Invalid")
    expect(other.get_by_role("alert")).to_contain_text("Key invalid")
    expect(other.get_by_test_id("last-used")).to_have_text("not yet")
    assert secret not in page.content()
    tab.shot("byok-health")
