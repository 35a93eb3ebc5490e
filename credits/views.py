"""Dashboard page for credits: balance, the ledger with category and date filters, paging, and
the same selection as CSV."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.auth import request_user
from accounts.models import User
from core.pages import dashboard_login_required, is_htmx
from credits.models import Category, LedgerEntry
from credits.money import credits_text
from credits.selectors import credit_balance, ledger_entries_for

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


@require_GET
@dashboard_login_required
def ledger(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
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
    template = "dashboard/_ledger.html" if is_htmx(request) else "dashboard/credits.html"
    return TemplateResponse(request, template, context)


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
