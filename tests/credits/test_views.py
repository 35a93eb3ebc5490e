"""Dashboard Credits page: balance, ledger filtered by category and dates, paging, CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from credits.models import BillingAccount
from credits.services.ledger import credit_charge
from credits.views import PAGE_SIZE
from tests.credits.conftest import CREDIT

pytestmark = pytest.mark.django_db

PAGE = "/credits/"


@pytest.fixture
def browser(funded_user: Any) -> Client:
    client = Client()
    client.force_login(funded_user)
    return client


def test_page_shows_balance_and_entries(browser: Client, funded_user: Any) -> None:
    credit_charge(user=funded_user, category="embeddings", units=10_000, idempotency_key="e1")

    response = browser.get(PAGE)

    html = response.content.decode()
    assert response.status_code == 200
    assert "100.000" in html  # the grant
    assert "Embeddings" in html and "Grant" in html
    assert "2 entries" in html
    assert 'href="/credits/ledger.csv"' in html


def test_category_filter(browser: Client, funded_user: Any) -> None:
    credit_charge(user=funded_user, category="tool_call", units=3, idempotency_key="t1")

    html = browser.get(PAGE, {"category": "tool_call"}).content.decode()

    assert "1 entry matches these filters" in html
    assert 'data-category="tool_call"' in html
    assert 'data-category="grant"' not in html


def test_date_filter_includes_both_ends(
    browser: Client, funded_user: Any, fund: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(timezone, "now", lambda: datetime(2026, 1, 10, 23, 59, tzinfo=UTC))
        fund(funded_user, 5 * CREDIT)

    html = browser.get(PAGE, {"date_from": "2026-01-10", "date_to": "2026-01-10"}).content.decode()

    assert "1 entry matches these filters" in html
    assert "+5.000" in html
    html = browser.get(PAGE, {"date_from": "2026-01-11"}).content.decode()
    assert "+5.000" not in html


def test_bad_filters_say_why_and_show_everything(browser: Client) -> None:
    html = browser.get(PAGE, {"date_from": "2026-02-01", "date_to": "2026-01-01", "category": "nope"}).content.decode()

    assert "Those filters don't work" in html
    assert "1 entry" in html


def test_htmx_filter_returns_only_the_results(browser: Client) -> None:
    response = browser.get(PAGE, {"category": "grant"}, HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert html.lstrip().startswith('<div id="ledger"')
    assert "<html" not in html
    assert 'href="/credits/ledger.csv?category=grant"' in html


def test_paging(browser: Client, funded_user: Any) -> None:
    for i in range(PAGE_SIZE + 2):
        credit_charge(user=funded_user, category="tool_call", units=1, idempotency_key=f"p{i}")

    first = browser.get(PAGE).content.decode()
    second = browser.get(PAGE, {"page": 2}).content.decode()
    beyond = browser.get(PAGE, {"page": "999"})

    assert "Page 1 of 2" in first and "Older →" in first
    assert "Page 2 of 2" in second and "← Newer" in second
    assert second.count("<tr data-category=") == 3
    assert beyond.status_code == 200  # the last page, not an error


def test_csv_export_follows_the_filters(browser: Client, funded_user: Any) -> None:
    credit_charge(user=funded_user, category="enrichment", units=2, idempotency_key="x1")

    response = browser.get("/credits/ledger.csv", {"category": "enrichment"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:4] == ["date", "category", "amount_credits", "balance_after_credits"]
    assert len(rows) == 2
    assert rows[1][1] == "enrichment"
    assert rows[1][2].startswith("-")


def test_csv_neutralises_formulas(browser: Client, funded_user: Any) -> None:
    from credits.services.ledger import credit_grant

    credit_grant(user=funded_user, amount=1, reason="=HYPERLINK(1)", idempotency_key="f1")

    text = browser.get("/credits/ledger.csv").content.decode()

    assert "'=HYPERLINK(1)" in text


def test_only_your_own_entries(browser: Client, make_user: Callable[..., Any], fund: Callable[..., Any]) -> None:
    other = make_user("other@example.com")
    fund(other, 7 * CREDIT)

    assert "+7.000" not in browser.get(PAGE).content.decode()
    assert "7.000" not in browser.get("/credits/ledger.csv").content.decode()


def test_signed_out_is_sent_to_sign_in(client: Client) -> None:
    assert client.get(PAGE)["Location"].startswith("/login/?next=/credits/")


# --- Low-balance alerts: the thresholds form --------------------------------------------------------


def test_alerts_form_shows_and_saves_thresholds_in_credits(browser: Client, funded_user: Any) -> None:
    html = browser.get(PAGE).content.decode()
    assert 'value="100, 20"' in html
    assert "Your balance is above all of them now." in html

    response = browser.post("/credits/alerts", {"thresholds": " 12.5, 250 ,1000"})

    assert response.status_code == 302 and response["Location"] == "/credits/#alerts"
    assert BillingAccount.objects.get(user=funded_user).alert_thresholds == [1_000_000, 250_000, 12_500]
    html = browser.get(PAGE).content.decode()
    assert "Saved: we tell you when your credits fall below 1,000, 250 or 12.5 credits, and when they run out." in html
    assert 'value="1,000, 250, 12.5"' not in html  # shown without separators, so it reads back the same
    assert 'value="1000, 250, 12.5"' in html
    assert "Your balance is below 250 now." in html

    browser.post("/credits/alerts", {"thresholds": ""})
    assert BillingAccount.objects.get(user=funded_user).alert_thresholds == []


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ("abc", "&#x27;abc&#x27; is not a number of credits."),
        ("1.0001", "at most three decimals"),
        ("10, 10", "Each threshold once"),
        ("0", "from 1 to 1,000,000,000"),
        ("1, 2, 3, 4, 5, 6", "At most 5 thresholds"),
    ],
)
def test_alerts_form_refuses_bad_input_and_says_why(browser: Client, funded_user: Any, typed: str, says: str) -> None:
    response = browser.post("/credits/alerts", {"thresholds": typed})

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="alerts-error"' in html and says in html
    assert 'aria-invalid="true"' in html
    assert f'value="{typed}"' in html.replace("&#x27;", "'")  # what they typed stays to fix
    assert BillingAccount.objects.get(user=funded_user).alert_thresholds == [100_000, 20_000]
