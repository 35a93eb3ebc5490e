"""Home: "saved by your keys this month", the burn-rate forecast, the compact daily chart, and
the low-balance banner every dashboard page shows while the balance is below a threshold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from credits.services.alerts import credit_alert_thresholds_set
from credits.services.ledger import credit_charge, credit_grant
from dashboard.selectors import byok_savings_since, month_start
from routing.models import RoutedCall

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def _call(user: Any, *, key_source: str, would_cost: int, at: datetime) -> None:
    call = RoutedCall.objects.create(
        user=user, model="claude-sonnet-4-6", provider="anthropic", key_source=key_source, credits_would_cost=would_cost
    )
    RoutedCall.objects.filter(pk=call.pk).update(created_at=at)


@pytest.fixture
def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_month_start_is_the_first_utc_instant_of_the_month() -> None:
    assert month_start(datetime(2026, 3, 15, 12, 0, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)
    assert month_start(datetime(2026, 3, 1, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)


def test_savings_sum_this_months_byok_calls_only(user: Any, make_user: Any) -> None:
    other = make_user()
    _call(user, key_source="byok", would_cost=1_800, at=datetime(2026, 3, 1, 0, 0, tzinfo=UTC))
    _call(user, key_source="byok", would_cost=250, at=datetime(2026, 3, 15, 11, 0, tzinfo=UTC))
    _call(user, key_source="byok", would_cost=9_000, at=datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC))  # last month
    _call(user, key_source="platform", would_cost=7_000, at=datetime(2026, 3, 10, tzinfo=UTC))  # paid in credits
    _call(other, key_source="byok", would_cost=5_000, at=datetime(2026, 3, 10, tzinfo=UTC))  # someone else's

    assert byok_savings_since(user=user, since=month_start(NOW)) == 2_050
    assert byok_savings_since(user=make_user(), since=month_start(NOW)) == 0


def test_home_shows_savings_forecast_and_daily_chart(
    signed_in: Client, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timezone, "now", lambda: datetime(2026, 3, 15, 9, 0, tzinfo=UTC))
    credit_grant(user=user, amount=200_000, reason="start", idempotency_key="g")
    credit_charge(user=user, category="tool_call", units=70, idempotency_key="c")  # 7 credits today
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    _call(user, key_source="byok", would_cost=2_050, at=datetime(2026, 3, 2, tzinfo=UTC))

    html = signed_in.get("/").content.decode()

    assert 'data-testid="saved-this-month">2.050<' in html
    assert "what your BYOK calls in March would have cost in credits" in html
    assert "At the last 7 days&#x27; rate (1.000 credits a day), your credits last about 193 days." in html
    assert 'data-testid="spend-chart"' in html and 'class="cat-tool_call"' in html
    assert 'data-testid="low-balance-banner"' not in html


def test_banner_while_low_and_gone_when_topped_up(signed_in: Client, user: Any) -> None:
    credit_grant(user=user, amount=150_000, reason="start", idempotency_key="g")
    assert 'data-testid="low-balance-banner"' not in signed_in.get("/").content.decode()

    credit_charge(user=user, category="tool_call", units=1_000, idempotency_key="c")  # 50 credits left
    for page in ("/", "/credits/", "/settings/byok/"):
        html = signed_in.get(page).content.decode()
        assert "Your credits are low:</strong> 50.000 left (below 100)." in html, page
        assert 'href="/credits/">Top up / see spend</a>' in html

    credit_charge(user=user, category="tool_call", units=500, idempotency_key="c2")  # 0
    html = signed_in.get("/").content.decode()
    assert "Your credits are used up:</strong> hosted LLM calls stop; calls on your own keys continue." in html

    credit_grant(user=user, amount=150_000, reason="top up", idempotency_key="g2")
    assert 'data-testid="low-balance-banner"' not in signed_in.get("/").content.decode()


def test_no_banner_without_an_account_or_after_lowering_the_thresholds(signed_in: Client, user: Any) -> None:
    assert 'data-testid="low-balance-banner"' not in signed_in.get("/").content.decode()  # no account yet
    credit_grant(user=user, amount=50_000, reason="start", idempotency_key="g")
    assert 'data-testid="low-balance-banner"' in signed_in.get("/").content.decode()
    credit_alert_thresholds_set(user=user, thresholds=[10_000])
    assert 'data-testid="low-balance-banner"' not in signed_in.get("/").content.decode()
