"""Credits you can see coming, in a real browser: the low-balance banner and what the keys saved on
Home, the spend chart per day, the per-model table, the forecast and the CSV on the Credits page,
and the alert thresholds form."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from credits.pricing import Usage
from credits.services.holds import credit_hold, credit_settle
from credits.services.ledger import credit_charge, credit_usage_record
from routing.models import RoutedCall

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest skips these tests (or fails them, with NIYRA_REQUIRE_BROWSER=1)
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SONNET: dict[str, Any] = {"model": "claude-sonnet-4-6", "price_key": "claude-sonnet-4"}


def _usage_over_three_weeks(user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """About 60 credits of spend spread over the last three weeks, on every kind of path."""
    today = datetime.combine(timezone.now().astimezone(UTC).date(), time(9), tzinfo=UTC)
    with monkeypatch.context() as m:
        for days_ago in range(20, -1, -1):
            m.setattr(timezone, "now", lambda moment=today - timedelta(days=days_ago): moment)
            key = f"d{days_ago}"
            if days_ago % 2 == 0:
                hold = credit_hold(
                    user=user, worst=Usage(input_tokens=4_000, output_tokens=2_000), idempotency_key=key, **SONNET
                )
                usage = Usage(input_tokens=2_000 + 150 * days_ago, output_tokens=1_000 + 40 * (20 - days_ago))
                credit_settle(hold_id=hold.pk, usage=usage, idempotency_key=key)
            credit_charge(user=user, category="tool_call", units=3 + days_ago % 4, idempotency_key=f"t{key}")
            if days_ago % 3 == 0:
                credit_charge(user=user, category="embeddings", units=400_000, idempotency_key=f"e{key}")
            if days_ago % 5 == 0:
                credit_charge(user=user, category="enrichment", units=2, idempotency_key=f"r{key}")
            if days_ago % 4 == 1:
                credit_usage_record(
                    user=user, usage=Usage(input_tokens=3_000, output_tokens=800), idempotency_key=f"b{key}", **SONNET
                )
    RoutedCall.objects.create(
        user=user, model="claude-sonnet-4-6", provider="anthropic", key_source="byok", credits_would_cost=2_100
    )


def test_spend_chart_forecast_and_low_balance_banner(
    open_tab: Callable[[], Any], make_customer: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_customer(plan="pro", credits_mc=150_000)
    _usage_over_three_weeks(user, monkeypatch)
    tab = open_tab()
    page = tab.page
    tab.login(user.email)

    # Home: below the default 100 credits, so the banner says so on every page; the keys' savings.
    tab.goto("/")
    banner = page.get_by_test_id("low-balance-banner")
    expect(banner).to_contain_text("Your credits are low:")
    expect(banner).to_contain_text("(below 100)")
    expect(page.get_by_test_id("saved-this-month")).to_have_text("2.100")
    expect(page.get_by_test_id("forecast")).to_contain_text("At the last 7 days' rate (")
    tab.shot("home-low-balance")

    # Credits: the chart per day, the per-model table, the forecast and the CSV of the days.
    banner.get_by_role("link", name="Top up / see spend").click()
    page.wait_for_url("**/credits/")
    chart = page.get_by_test_id("spend-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.cat-llm")).to_have_count(11)
    expect(chart.locator("rect.cat-tool_call")).to_have_count(21)
    expect(page.get_by_test_id("forecast")).to_contain_text("your credits last about")
    expect(page.get_by_test_id("spend-models")).to_contain_text("claude-sonnet-4-6")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="CSV per day").click()
    rows = list(csv.reader(io.StringIO(Path(download_info.value.path()).read_text(encoding="utf-8"))))
    assert rows[0][0] == "date" and rows[0][-1] == "total" and len(rows) == 31
    assert sum(float(row[-1]) for row in rows[1:]) > 0
    tab.assert_clean()
    page.locator("#spend-heading").scroll_into_view_if_needed()
    tab.shot("credits-spend")

    # Alerts: a clear error for a typo, then lower thresholds: the balance is above them, no banner.
    field = page.get_by_label("Tell me when my credits fall below")
    field.fill("50, ten")
    page.get_by_role("button", name="Save alerts").click()
    expect(page.get_by_test_id("alerts-error")).to_contain_text("'ten' is not a number of credits.")
    expect(page.get_by_label("Tell me when my credits fall below")).to_have_value("50, ten")
    page.get_by_label("Tell me when my credits fall below").fill("50, 10")
    page.get_by_role("button", name="Save alerts").click()
    expect(page.get_by_role("status")).to_contain_text("fall below 50 or 10 credits")
    expect(page.get_by_test_id("low-balance-banner")).to_have_count(0)
    tab.assert_clean()
