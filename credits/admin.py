"""Support staff's view of billing: accounts searchable by email, a read-only ledger and holds,
and actions (grant, adjust, change plan, grant/revoke Apex) that go through the services, so
each one is checked, locked, idempotent and audited like any other write.

Permissions: viewing needs the models' view permissions; each action needs its own permission
(``credits.grant_credits``, ``credits.change_plan``, ``credits.manage_apex``), so a staff member
can be given exactly what their job needs without being a superuser.
"""

from __future__ import annotations

import csv
import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from accounts.auth import request_user
from core.admin import ReadOnlyAdmin
from core.errors import NiyraError
from credits.models import BillingAccount, CreditHold, LedgerEntry, Plan
from credits.money import MILLICREDITS_PER_CREDIT, credits_text
from credits.services.accounts import billing_apex_set, billing_plan_set
from credits.services.ledger import credit_adjust, credit_grant


def _to_millicredits(credits: Decimal) -> int:
    return int(credits * MILLICREDITS_PER_CREDIT)  # exact: the form allows 3 decimal places


class _ActionForm(forms.Form):
    # One random token per rendered form: a double-submitted form replays instead of granting twice.
    submission = forms.CharField(widget=forms.HiddenInput)


class GrantForm(_ActionForm):
    amount = forms.DecimalField(
        label="Credits to grant", max_digits=15, decimal_places=3, min_value=Decimal("0.001"), help_text="e.g. 25.5"
    )
    reason = forms.CharField(max_length=255, help_text="Required; goes into the ledger and the audit trail.")


class AdjustForm(_ActionForm):
    amount = forms.DecimalField(
        label="Adjustment (credits, + or -)",
        max_digits=15,
        decimal_places=3,
        help_text="Negative to take credits back. Can't take the available balance below zero.",
    )
    reason = forms.CharField(max_length=255, help_text="Required; goes into the ledger and the audit trail.")

    def clean_amount(self) -> Decimal:
        amount: Decimal = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("Not zero.")
        return amount


class PlanForm(_ActionForm):
    plan = forms.ChoiceField(choices=Plan.choices)


@admin.register(BillingAccount)
class BillingAccountAdmin(ReadOnlyAdmin):
    list_display = ("user", "plan", "apex_enabled", "balance_credits", "reserved_credits", "available_credits")
    list_filter = ("plan", "apex_enabled")
    search_fields = ("user__email",)
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = ("ledger_link", "holds_link", "low_balance_alerts", "created_at", "updated_at")
    fields = (
        "user",
        "plan",
        "apex_enabled",
        "balance",
        "reserved",
        "low_balance_alerts",
        "ledger_link",
        "holds_link",
        "created_at",
    )
    actions = ("grant_credits", "adjust_credits", "change_plan", "grant_apex", "revoke_apex")

    # --- display ---

    @admin.display(description="balance (credits)", ordering="balance")
    def balance_credits(self, account: BillingAccount) -> str:
        return credits_text(account.balance)

    @admin.display(description="reserved (credits)", ordering="reserved")
    def reserved_credits(self, account: BillingAccount) -> str:
        return credits_text(account.reserved)

    @admin.display(description="available (credits)")
    def available_credits(self, account: BillingAccount) -> str:
        return credits_text(account.available)

    @admin.display(description="low-balance alerts")
    def low_balance_alerts(self, account: BillingAccount) -> str:
        thresholds = ", ".join(credits_text(t, compact=True) for t in account.alert_thresholds) or "none"
        if account.alert_band is None:
            state = "above every threshold"
        elif account.alert_band == 0:
            state = "used up"
        else:
            state = f"below {credits_text(account.alert_band, compact=True)}"
        return f"thresholds (credits): {thresholds}; now {state}"

    @admin.display(description="ledger")
    def ledger_link(self, account: BillingAccount) -> str:
        url = reverse("admin:credits_ledgerentry_changelist") + f"?account__id__exact={account.pk}"
        return format_html('<a href="{}">Ledger entries</a>', url)

    @admin.display(description="holds")
    def holds_link(self, account: BillingAccount) -> str:
        url = reverse("admin:credits_credithold_changelist") + f"?account__id__exact={account.pk}"
        return format_html('<a href="{}">Credit holds</a>', url)

    # --- permissions for the actions ---

    def has_grant_credits_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("credits.grant_credits")

    def has_change_plan_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("credits.change_plan")

    def has_manage_apex_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("credits.manage_apex")

    # --- actions ---

    def _form_page(
        self, request: HttpRequest, queryset: QuerySet[BillingAccount], form: forms.Form, *, action: str, title: str
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "form": form,
            "accounts": queryset.select_related("user"),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/credits/billingaccount/action_form.html", context)

    def _bound_or_new(self, form_class: type[forms.Form], request: HttpRequest) -> forms.Form:
        if "apply" in request.POST:
            return form_class(request.POST)
        return form_class(initial={"submission": uuid.uuid4().hex})

    def _report(self, request: HttpRequest, done: int, failures: list[str], what: str) -> None:
        if done:
            self.message_user(request, f"{what}: {done} account(s).", messages.SUCCESS)
        for failure in failures:
            self.message_user(request, failure, messages.ERROR)

    def _apply_credits(
        self, request: HttpRequest, queryset: QuerySet[BillingAccount], *, form_class: type[forms.Form], adjust: bool
    ) -> TemplateResponse | None:
        form = self._bound_or_new(form_class, request)
        if not form.is_bound or not form.is_valid():
            action, title = ("adjust_credits", "Adjust credits") if adjust else ("grant_credits", "Grant credits")
            return self._form_page(request, queryset, form, action=action, title=title)
        amount = _to_millicredits(form.cleaned_data["amount"])
        reason = form.cleaned_data["reason"]
        service = credit_adjust if adjust else credit_grant
        staff = request_user(request)
        done, failures = 0, []
        for account in queryset.select_related("user"):
            key = f"admin:{form.cleaned_data['submission']}:{account.pk}"
            try:
                service(user=account.user, amount=amount, reason=reason, idempotency_key=key, actor=staff)
            except NiyraError as exc:
                failures.append(f"{account.user}: {exc.message} {exc.detail or ''}".strip())
            else:
                done += 1
        self._report(request, done, failures, "Adjusted" if adjust else "Granted credits")
        return None

    @admin.action(description="Grant credits…", permissions=["grant_credits"])
    def grant_credits(self, request: HttpRequest, queryset: QuerySet[BillingAccount]) -> TemplateResponse | None:
        return self._apply_credits(request, queryset, form_class=GrantForm, adjust=False)

    @admin.action(description="Adjust credits (+/-)…", permissions=["grant_credits"])
    def adjust_credits(self, request: HttpRequest, queryset: QuerySet[BillingAccount]) -> TemplateResponse | None:
        return self._apply_credits(request, queryset, form_class=AdjustForm, adjust=True)

    @admin.action(description="Change plan…", permissions=["change_plan"])
    def change_plan(self, request: HttpRequest, queryset: QuerySet[BillingAccount]) -> TemplateResponse | None:
        form = self._bound_or_new(PlanForm, request)
        if not form.is_bound or not form.is_valid():
            return self._form_page(request, queryset, form, action="change_plan", title="Change plan")
        for account in queryset.select_related("user"):
            billing_plan_set(user=account.user, plan=form.cleaned_data["plan"], actor=request_user(request))
        self._report(request, queryset.count(), [], f"Plan set to {form.cleaned_data['plan']}")
        return None

    @admin.action(description="Grant Apex access", permissions=["manage_apex"])
    def grant_apex(self, request: HttpRequest, queryset: QuerySet[BillingAccount]) -> None:
        for account in queryset.select_related("user"):
            billing_apex_set(user=account.user, enabled=True, actor=request_user(request))
        self._report(request, queryset.count(), [], "Apex access granted")

    @admin.action(description="Revoke Apex access", permissions=["manage_apex"])
    def revoke_apex(self, request: HttpRequest, queryset: QuerySet[BillingAccount]) -> None:
        for account in queryset.select_related("user"):
            billing_apex_set(user=account.user, enabled=False, actor=request_user(request))
        self._report(request, queryset.count(), [], "Apex access revoked")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "account", "category", "amount", "balance_after", "description", "flagged")
    list_filter = ("category", "key_source", "flagged")
    search_fields = ("account__user__email", "idempotency_key", "model", "price_key")
    list_select_related = ("account__user",)
    raw_id_fields = ("account", "hold")
    date_hierarchy = "created_at"
    actions = ("export_csv",)

    @admin.action(description="Export selected entries as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[LedgerEntry]) -> HttpResponse:
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="ledger.csv"'
        columns = ("id", "created_at", "category", "amount", "balance_after", "idempotency_key", "description")
        writer = csv.writer(response)
        writer.writerow(["email", *columns])
        for entry in queryset.select_related("account__user").order_by("id"):
            writer.writerow([entry.account.user.email, *(getattr(entry, column) for column in columns)])
        return response


@admin.register(CreditHold)
class CreditHoldAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "account", "category", "model", "amount", "status", "expires_at", "overrun")
    list_filter = ("status", "category", "overrun")
    search_fields = ("account__user__email", "idempotency_key")
    list_select_related = ("account__user",)
    raw_id_fields = ("account",)
    date_hierarchy = "created_at"
