"""The dashboard home page: it shows a little of every app, so it belongs to none of them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.auth import request_user
from byok.models import KeyStatus
from byok.selectors import provider_key_effective_status, provider_key_list
from core.pages import dashboard_login_required
from credits.charts import spend_chart
from credits.models import USAGE_CATEGORIES, Category
from credits.money import MILLICREDITS_PER_CREDIT
from credits.selectors import SPEND_DAYS, billing_account_for, burn_rate, credit_balance, spend_per_day, usage_breakdown
from dashboard.selectors import byok_savings_since, month_start
from providers import Provider
from routing.selectors import routed_call_recent

SPEND_WINDOW = timedelta(days=30)
RECENT_CALLS = 10
COMPACT_CHART = {"width": 360, "height": 120}  # half the Credits page's chart: the card is half as wide


@dataclass(frozen=True, slots=True)
class SpendRow:
    label: str
    millicredits: int
    share: Decimal


@require_GET
@dashboard_login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    now = timezone.now()
    usage = usage_breakdown(user=user, start=now - SPEND_WINDOW, end=now)
    spend = [
        SpendRow(
            label=Category(category).label,
            millicredits=usage.by_category.get(category, 0),
            share=Decimal(usage.by_category.get(category, 0)) / usage.total if usage.total else Decimal(0),
        )
        for category in USAGE_CATEGORIES
    ]
    keys = {key.provider: key for key in provider_key_list(user=user)}
    key_rows = []
    for provider in Provider.values:
        key = keys.get(provider)
        status = provider_key_effective_status(key) if key is not None else ""
        key_rows.append(
            {
                "label": Provider(provider).label,
                "key": key,
                "status": status,
                "status_label": KeyStatus(status).label if status else "Not connected",
            }
        )
    balance = credit_balance(user=user)
    history = spend_per_day(user=user, today=now.astimezone(UTC).date())
    context: dict[str, Any] = {
        "account": billing_account_for(user=user),
        "balance": balance,
        "spend_history": history,
        "spend_chart": spend_chart(history, **COMPACT_CHART),
        "spend_days": SPEND_DAYS,
        "forecast": burn_rate(history=history, available=balance.available),
        "month": now.astimezone(UTC),
        "saved_this_month": byok_savings_since(user=user, since=month_start(now)),
        "usage": usage,
        "spend": spend,
        # Credits for the chart (a display value: the page's numbers stay integers in mc).
        "chart": {
            "labels": [row.label for row in spend],
            "credits": [row.millicredits / MILLICREDITS_PER_CREDIT for row in spend],
        },
        "key_rows": key_rows,
        "keys_connected": bool(keys),  # none: the keys card offers to add one (or says BYOK needs Pro)
        "calls": list(routed_call_recent(user=user, limit=RECENT_CALLS)),
        "window_days": SPEND_WINDOW.days,
    }
    return render(request, "dashboard/home.html", context)


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on pages without an icon link (the admin): a 404 there is a
    console error on every admin page."""
    return HttpResponsePermanentRedirect(static("dashboard/favicon.svg"))
