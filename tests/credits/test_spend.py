"""Spend you can see: per UTC day and category, per model, the burn-rate forecast, the chart and
the CSV downloads, from entries posted at known moments."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from credits.charts import spend_chart
from credits.pricing import Usage
from credits.selectors import BurnRate, ModelSpend, burn_rate, spend_per_day, spend_per_model
from credits.services.holds import credit_hold, credit_settle
from credits.services.ledger import credit_charge, credit_usage_record

pytestmark = pytest.mark.django_db

TODAY = date(2026, 3, 15)
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
SONNET: dict[str, Any] = {"model": "claude-sonnet-4-6", "price_key": "claude-sonnet-4"}
CALL = Usage(input_tokens=1_000, output_tokens=1_000)  # 300 + 1,500 mc at Sonnet 4's rates


def _at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    monkeypatch.setattr(timezone, "now", lambda: moment)


@pytest.fixture
def history_user(funded_user: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """100 credits granted, then usage at known moments around the 30-day window's edges."""
    user = funded_user
    _at(monkeypatch, datetime(2026, 2, 13, 23, 59, 59, tzinfo=UTC))  # the day before the window
    credit_charge(user=user, category="enrichment", units=1, idempotency_key="before")
    _at(monkeypatch, datetime(2026, 2, 14, 0, 0, tzinfo=UTC))  # the window's first instant
    credit_charge(user=user, category="enrichment", units=1, idempotency_key="first")  # 2,000 mc
    _at(monkeypatch, datetime(2026, 3, 10, 9, 30, tzinfo=UTC))
    hold = credit_hold(user=user, worst=Usage(input_tokens=2_000, output_tokens=2_000), idempotency_key="h", **SONNET)
    credit_settle(hold_id=hold.pk, usage=CALL, idempotency_key="h")  # 1,800 mc
    credit_usage_record(user=user, usage=CALL, idempotency_key="byok", **SONNET)  # 0 mc, would cost 1,800
    _at(monkeypatch, datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC))
    credit_charge(user=user, category="tool_call", units=2, idempotency_key="late")  # 200 mc
    _at(monkeypatch, datetime(2026, 3, 15, 0, 0, tzinfo=UTC))
    credit_charge(user=user, category="embeddings", units=10_000, idempotency_key="emb")  # 20 mc
    _at(monkeypatch, datetime(2026, 3, 15, 10, 0, tzinfo=UTC))
    credit_charge(user=user, category="tool_call", units=5, idempotency_key="today")  # 500 mc
    _at(monkeypatch, NOW)
    return user


def test_spend_per_day_is_exact_per_utc_day_and_category(history_user: Any, make_user: Any) -> None:
    history = spend_per_day(user=history_user, today=TODAY)

    assert len(history.days) == 30
    assert (history.days[0].day, history.days[-1].day) == (date(2026, 2, 14), TODAY)
    spent = {day.day: {c: v for c, v in day.by_category.items() if v} for day in history.days if day.total}
    assert spent == {
        date(2026, 2, 14): {"enrichment": 2_000},
        date(2026, 3, 10): {"llm": 1_800},
        date(2026, 3, 14): {"tool_call": 200},
        date(2026, 3, 15): {"embeddings": 20, "tool_call": 500},
    }
    assert history.total == 4_520
    assert history.recent_total(7) == 2_520
    assert spend_per_day(user=make_user(), today=TODAY).total == 0  # someone else's spend is not theirs


def test_spend_per_model_counts_calls_tokens_credits_and_savings(history_user: Any) -> None:
    rows = spend_per_model(user=history_user, start=datetime(2026, 2, 14, tzinfo=UTC), end=NOW)

    assert rows == [
        ModelSpend("enrichment", "", 1, 0, 0, 0, 2_000, 0),
        ModelSpend("llm", "claude-sonnet-4-6", 2, 1, 2_000, 2_000, 1_800, 1_800),
        ModelSpend("tool_call", "", 2, 0, 0, 0, 700, 0),
        ModelSpend("embeddings", "", 1, 0, 0, 0, 20, 0),  # metered by units, not tokens
    ]
    assert [row.label for row in rows] == ["Enrichment", "claude-sonnet-4-6", "Tool calls", "Embeddings"]


def test_burn_rate_from_the_last_seven_days(history_user: Any) -> None:
    history = spend_per_day(user=history_user, today=TODAY)
    available = 100_000 - 2_000 - 4_520  # the grant, less the spend before the window and in it

    forecast = burn_rate(history=history, available=available)

    assert (forecast.per_day, forecast.days_left) == (360, 259)  # 2,520 mc / 7, rounded up
    assert forecast.sentence == "At the last 7 days' rate (0.360 credits a day), your credits last about 259 days."


@pytest.mark.parametrize(
    ("per_day", "available", "sentence"),
    [
        (0, 5_000, "No credits spent in the last 7 days, so there is no rate to forecast from."),
        (
            1_000,
            0,
            "Your credits are used up: hosted LLM calls stop until you top up; calls on your own keys continue.",
        ),
        (2_000, 1_999, "At the last 7 days' rate (2.000 credits a day), your credits last less than a day."),
        (1_000, 1_999, "At the last 7 days' rate (1.000 credits a day), your credits last about 1 day."),
        (1, 366, "At the last 7 days' rate (0.001 credits a day), your credits last more than a year."),
        (1, 365, "At the last 7 days' rate (0.001 credits a day), your credits last about 365 days."),
    ],
)
def test_forecast_wording(per_day: int, available: int, sentence: str) -> None:
    assert BurnRate(per_day=per_day, available=available).sentence == sentence


def test_chart_stacks_each_day_scaled_to_the_busiest(history_user: Any) -> None:
    chart = spend_chart(spend_per_day(user=history_user, today=TODAY), width=300, height=118)

    assert chart.baseline == 100.0
    assert chart.peak == "2.000"
    first = [bar for bar in chart.bars if bar.x < 10]
    assert [(bar.category, bar.height, bar.y) for bar in first] == [("enrichment", 96.0, 4.0)]  # the peak day
    today = [bar for bar in chart.bars if bar.x > 290]
    assert [(bar.category, bar.height) for bar in today] == [("embeddings", 1.0), ("tool_call", 24.0)]
    assert today[1].title == "15 Mar: Tool calls 0.500 credits"
    labels = [(label.text, label.anchor) for label in chart.labels]
    assert labels == [
        ("14 Feb", "start"),
        ("21 Feb", "middle"),
        ("28 Feb", "middle"),
        ("7 Mar", "middle"),
        ("15 Mar", "end"),
    ]
    assert [category for category, _ in chart.legend] == ["llm", "embeddings", "tool_call", "enrichment"]


# --- The page and the CSV downloads -------------------------------------------------------------------


@pytest.fixture
def browser(history_user: Any) -> Client:
    client = Client()
    client.force_login(history_user)
    return client


def _csv(response: Any) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment;")
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_daily_csv_has_every_day_and_category(browser: Client) -> None:
    rows = _csv(browser.get("/credits/spend-per-day.csv"))

    assert rows[0] == [
        "date",
        "llm",
        "embeddings",
        "tool_call",
        "voice_tts",
        "voice_stt",
        "enrichment",
        "telephony",
        "total",
    ]
    assert len(rows) == 31
    assert rows[1] == ["2026-02-14", "0.000", "0.000", "0.000", "0.000", "0.000", "2.000", "0.000", "2.000"]
    assert rows[-6] == ["2026-03-10", "1.800", "0.000", "0.000", "0.000", "0.000", "0.000", "0.000", "1.800"]
    assert rows[-1] == ["2026-03-15", "0.000", "0.020", "0.500", "0.000", "0.000", "0.000", "0.000", "0.520"]


def test_model_csv_has_one_row_per_model(browser: Client) -> None:
    rows = _csv(browser.get("/credits/spend-per-model.csv"))

    assert rows == [
        [
            "category",
            "model",
            "calls",
            "calls_on_your_keys",
            "input_tokens",
            "output_tokens",
            "credits_spent",
            "credits_saved_by_your_keys",
        ],
        ["enrichment", "", "1", "0", "0", "0", "2.000", "0.000"],
        ["llm", "claude-sonnet-4-6", "2", "1", "2000", "2000", "1.800", "1.800"],
        ["tool_call", "", "2", "0", "0", "0", "0.700", "0.000"],
        ["embeddings", "", "1", "0", "0", "0", "0.020", "0.000"],
    ]


def test_credits_page_shows_the_chart_the_models_and_the_forecast(browser: Client) -> None:
    html = browser.get("/credits/").content.decode()

    assert 'data-testid="spend-chart"' in html
    assert html.count('<rect class="cat-') == 5
    assert "At the last 7 days&#x27; rate (0.360 credits a day), your credits last about 259 days." in html
    assert 'data-testid="spend-models"' in html and "claude-sonnet-4-6" in html
    assert 'href="/credits/spend-per-day.csv"' in html and 'href="/credits/spend-per-model.csv"' in html
    assert " style=" not in html  # the CSP allows no style attribute


def test_a_user_without_spend_reads_so(funded_user: Any) -> None:
    client = Client()
    client.force_login(funded_user)

    html = client.get("/credits/").content.decode()

    assert "No credits spent in the last 30 days." in html
    assert "No credits spent in the last 7 days, so there is no rate to forecast from." in html
    assert 'data-testid="spend-chart"' not in html
