"""Dashboard page for credits: balance, low-balance alerts (the thresholds form), spend per day
and per model over the last 30 days with the burn-rate forecast (and both as CSV), the ledger
with category and date filters, paging, and the same selection as CSV."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.auth import request_user
from accounts.models import User
from core.errors import NiyraError
from core.pages import dashboard_login_required, is_htmx
from credits.charts import spend_chart
from credits.models import USAGE_CATEGORIES, Category, LedgerEntry
from credits.money import credits_parse, credits_text
from credits.selectors import (
    SPEND_DAYS,
    billing_account_for,
    burn_rate,
    credit_balance,
    ledger_entries_for,
    spend_per_day,
    spend_per_model,
)
from credits.services.alerts import credit_alert_thresholds_set

PAGE_SIZE = 25


class LedgerFilterForm(forms.Form):
    """Shape only. Dates are whole UTC days, both ends included."""

    category = forms.ChoiceField(choices=[("", "All categories"), *Category.choices], required=False)
    date_from = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError("“From” is after “To”.")
        return data


class AlertThresholdsForm(forms.Form):
    """Shape only: credits as people type them, comma-separated, into millicredits. The rules
    (how many, how large, each once) are the service's."""

    thresholds = forms.CharField(
        label="Tell me when my credits fall below",
        required=False,
        max_length=200,
        help_text="Credits, separated by commas (e.g. 100, 20). Leave empty to hear only when they run out.",
    )

    def clean_thresholds(self) -> list[int]:
        text = self.cleaned_data.get("thresholds") or ""
        try:
            return [credits_parse(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


def thresholds_text(thresholds: list[int]) -> str:
    """As the form takes them back: commas separate amounts, so none inside one."""
    return ", ".join(credits_text(amount, for_people=False, compact=True) for amount in thresholds)


def _thresholds_sentence(thresholds: list[int]) -> str:
    amounts = [credits_text(amount, compact=True) for amount in thresholds]
    listed = amounts[0] if len(amounts) == 1 else f"{', '.join(amounts[:-1])} or {amounts[-1]}"
    return f"Saved: we tell you when your credits fall below {listed} credits, and when they run out."


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _filtered(user: User, form: LedgerFilterForm) -> Any:
    """The selected entries; an invalid filter selects everything (and the form says why)."""
    data = form.cleaned_data if form.is_valid() else {}
    start: date | None = data.get("date_from")
    end: date | None = data.get("date_to")
    return ledger_entries_for(
        user=user,
        category=data.get("category") or None,
        since=_day_start(start) if start else None,
        until=_day_start(end + timedelta(days=1)) if end else None,
    )


def _spend_context(user: User) -> dict[str, Any]:
    """The spend section: the chart of the last 30 days, the per-model table and the forecast."""
    now = timezone.now()
    today = now.astimezone(UTC).date()
    history = spend_per_day(user=user, today=today)
    balance = credit_balance(user=user)
    return {
        "spend_history": history,
        "spend_chart": spend_chart(history),
        "spend_models": spend_per_model(user=user, start=_day_start(history.days[0].day), end=now),
        "spend_categories": [
            (Category(c).label, history.by_category[str(c)]) for c in USAGE_CATEGORIES if history.by_category[str(c)]
        ],
        "forecast": burn_rate(history=history, available=balance.available),
        "spend_days": SPEND_DAYS,
    }


def _page(request: HttpRequest, user: User, alerts_form: AlertThresholdsForm | None = None) -> Any:
    form = LedgerFilterForm(request.GET or None)
    page = Paginator(_filtered(user, form), PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "balance": credit_balance(user=user),
        "query": query.urlencode(),
        "filtered": bool(form.is_bound and form.is_valid() and any(form.cleaned_data.values())),
    }
    if is_htmx(request):
        return TemplateResponse(request, "dashboard/_ledger.html", context)
    account = billing_account_for(user=user)
    context |= _spend_context(user) | {
        "account": account,
        "alerts_form": alerts_form
        or AlertThresholdsForm(initial={"thresholds": thresholds_text(list(account.alert_thresholds))}),
    }
    return TemplateResponse(request, "dashboard/credits.html", context)


@require_GET
@dashboard_login_required
def ledger(request: HttpRequest) -> HttpResponse:
    return _page(request, request_user(request))


@require_POST
@dashboard_login_required
def alert_thresholds_update(request: HttpRequest) -> HttpResponse:
    """The Credits page's alerts form: the new thresholds, or the page again with why not."""
    user = request_user(request)
    form = AlertThresholdsForm(request.POST)
    if form.is_valid():
        try:
            account = credit_alert_thresholds_set(user=user, thresholds=form.cleaned_data["thresholds"])
        except NiyraError as exc:
            for problems in (exc.detail or {}).values():
                for problem in problems:
                    form.add_error("thresholds", problem)
        else:
            chosen = list(account.alert_thresholds)
            messages.success(
                request,
                _thresholds_sentence(chosen) if chosen else "Saved: we tell you only when your credits run out.",
            )
            return HttpResponseRedirect(reverse("dashboard:credits") + "#alerts")
    # The page again, its form saying why (a 200, like the dashboard's other forms).
    return _page(request, user, alerts_form=form)


_CSV_COLUMNS = (
    "date",
    "category",
    "amount_credits",
    "balance_after_credits",
    "description",
    "model",
    "price_key",
    "key_source",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "units",
    "entry_id",
)


def _text_cell(value: str) -> str:
    """Free text a spreadsheet would run as a formula gets a leading apostrophe."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv_row(entry: LedgerEntry) -> list[Any]:
    return [
        entry.created_at.isoformat(),
        entry.category,
        credits_text(entry.amount, for_people=False),
        credits_text(entry.balance_after, for_people=False),
        _text_cell(entry.description),
        _text_cell(entry.model),
        _text_cell(entry.price_key),
        entry.key_source,
        entry.input_tokens if entry.input_tokens is not None else "",
        entry.output_tokens if entry.output_tokens is not None else "",
        entry.cached_tokens if entry.cached_tokens is not None else "",
        entry.units if entry.units is not None else "",
        entry.pk,
    ]


@require_GET
@dashboard_login_required
def ledger_csv(request: HttpRequest) -> HttpResponse:
    """The filtered ledger (every page), oldest first, amounts in credits."""
    user = request_user(request)
    entries = _filtered(user, LedgerFilterForm(request.GET or None)).order_by("id")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d")
    response["Content-Disposition"] = f'attachment; filename="niyra-ledger-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    writer = csv.writer(response)
    writer.writerow(_CSV_COLUMNS)
    for entry in entries.iterator(chunk_size=2000):
        writer.writerow(_csv_row(entry))
    return response


def _csv_response(name: str) -> tuple[HttpResponse, Any]:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d")
    response["Content-Disposition"] = f'attachment; filename="niyra-{name}-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response, csv.writer(response)


@require_GET
@dashboard_login_required
def spend_daily_csv(request: HttpRequest) -> HttpResponse:
    """Credits spent per UTC day (the last 30, oldest first), one column per usage category."""
    today = timezone.now().astimezone(UTC).date()
    history = spend_per_day(user=request_user(request), today=today)
    response, writer = _csv_response("spend-per-day")
    writer.writerow(["date", *(str(c) for c in USAGE_CATEGORIES), "total"])
    for day in history.days:
        writer.writerow(
            [
                day.day.isoformat(),
                *(credits_text(day.by_category[str(c)], for_people=False) for c in USAGE_CATEGORIES),
                credits_text(day.total, for_people=False),
            ]
        )
    return response


@require_GET
@dashboard_login_required
def spend_models_csv(request: HttpRequest) -> HttpResponse:
    """The last 30 days' usage per category and model: calls, tokens, credits spent, saved."""
    now = timezone.now()
    start = _day_start(now.astimezone(UTC).date() - timedelta(days=SPEND_DAYS - 1))
    rows = spend_per_model(user=request_user(request), start=start, end=now)
    response, writer = _csv_response("spend-per-model")
    writer.writerow(
        [
            "category",
            "model",
            "calls",
            "calls_on_your_keys",
            "input_tokens",
            "output_tokens",
            "credits_spent",
            "credits_saved_by_your_keys",
        ]
    )
    for row in rows:
        writer.writerow(
            [
                row.category,
                _text_cell(row.model),
                row.calls,
                row.byok_calls,
                row.input_tokens,
                row.output_tokens,
                credits_text(row.credits, for_people=False),
                credits_text(row.saved, for_people=False),
            ]
        )
    return response
