"""Support's one-stop view of a customer, on the admin's user page.

Account (plan, balance, reserved, Apex), keys (status and hint only), connections, recent ledger
entries and audit rows, each with a link to the admin page whose actions change it through the
services (grant/adjust credits, change plan, Apex, disconnect a key, refresh a connection).
Support staff get exactly those permissions from the "Support" group (accounts.support); the
user itself is view-only to them. This app sits on the top floor: it reads every app.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from accounts.admin import UserAdmin
from accounts.models import AuditEvent, User
from byok.models import KeyStatus
from byok.selectors import provider_key_effective_status, provider_key_list
from connections.models import ConnectionStatus
from connections.selectors import connection_list
from credits.models import BillingAccount
from credits.money import credits_text
from credits.selectors import ledger_entries_for

RECENT_ROWS = 10


def _when(moment: datetime | None, *, missing: str = "-") -> str:
    """Timestamps on the support page: UTC, to the minute (the column headers say UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else missing


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str) -> SafeString:
    cells = ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    body = format_html_join("", "<tr>{}</tr>", cells)
    if not body:
        return format_html("{}", empty)
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    return format_html('<table class="support-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body)


# The request being rendered: ModelAdmin instances are shared by every request, so the
# summaries (which Django calls with the object only) find it here, per request.
_rendering: ContextVar[HttpRequest | None] = ContextVar("user_admin_request", default=None)


def _link(perm: str, url_name: str, query: str, text: str) -> SafeString:
    """A link to another admin page, only if this staff member may open it."""
    request = _rendering.get()
    if request is not None and not request.user.has_perm(perm):
        return format_html("")
    return format_html('<p><a href="{}?{}">{}</a></p>', reverse(url_name), query, text)


admin.site.unregister(User)


@admin.register(User)
class SupportUserAdmin(UserAdmin):
    list_display = ("email", "plan", "available_credits", "is_staff", "is_active", "date_joined", "last_login")
    list_select_related = ("billing_account",)
    support_fields = ("account_summary", "keys_summary", "connections_summary", "recent_ledger", "recent_audit")
    readonly_fields = support_fields

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:  # the add form
            return fieldsets
        return (fieldsets[0], ("Support overview", {"fields": self.support_fields}), *fieldsets[1:])

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        token = _rendering.set(request)
        try:
            response = super().change_view(request, object_id, form_url, extra_context)
            if isinstance(response, TemplateResponse):
                response.render()  # the summaries run while rendering: render while the request is set
            return response
        finally:
            _rendering.reset(token)

    # --- list columns ---

    @staticmethod
    def _account(user: User) -> BillingAccount | None:
        try:
            return user.billing_account
        except BillingAccount.DoesNotExist:
            return None

    @admin.display(description="plan", ordering="billing_account__plan")
    def plan(self, user: User) -> str:
        account = self._account(user)
        return account.get_plan_display() if account else "-"

    @admin.display(description="available (credits)")
    def available_credits(self, user: User) -> str:
        account = self._account(user)
        return credits_text(account.available) if account else "-"

    # --- the support overview (read-only; reads only, never creates anything) ---

    @admin.display(description="Account")
    def account_summary(self, user: User) -> SafeString:
        account = BillingAccount.objects.filter(user=user).first()
        if account is None:
            return format_html('<p class="help">{}</p>', "No billing account yet (free plan, no credits).")
        rows = [
            (
                account.get_plan_display(),
                credits_text(account.balance),
                credits_text(account.reserved),
                credits_text(account.available),
                "yes" if account.apex_enabled else "no",
            )
        ]
        table = _table(("Plan", "Balance", "Reserved", "Available", "Apex"), rows, empty="")
        link = _link(
            "credits.view_billingaccount",
            "admin:credits_billingaccount_changelist",
            f"user__id__exact={user.pk}",
            "Grant or adjust credits, change plan, grant Apex →",
        )
        return format_html("{}{}", table, link)

    @admin.display(description="Keys (BYOK)")
    def keys_summary(self, user: User) -> SafeString:
        rows = [
            (
                key.get_provider_display(),
                KeyStatus(provider_key_effective_status(key)).label,
                key.hint,
                _when(key.last_tested_at, missing="never"),
                key.last_error_code or "-",
            )
            for key in provider_key_list(user=user)
        ]
        table = _table(("Provider", "Status", "Key", "Last tested", "Last error"), rows, empty="No keys connected.")
        link = _link(
            "byok.view_providerkey",
            "admin:byok_providerkey_changelist",
            f"user__id__exact={user.pk}",
            "Keys (Disconnect) →",
        )
        return format_html("{}{}", table, link if rows else "")

    @admin.display(description="Connections")
    def connections_summary(self, user: User) -> SafeString:
        rows = [
            (
                connection.integration,
                ConnectionStatus(connection.status).label,
                _when(connection.expires_at),
                _when(connection.last_refreshed_at),
                connection.last_error_code or "-",
            )
            for connection in connection_list(user=user)
        ]
        table = _table(
            ("Integration", "Status", "Expires at", "Last refreshed", "Last error"), rows, empty="No connections."
        )
        link = _link(
            "connections.view_oauthconnection",
            "admin:connections_oauthconnection_changelist",
            f"user__id__exact={user.pk}",
            "Connections (Refresh now) →",
        )
        return format_html("{}{}", table, link if rows else "")

    @admin.display(description="Recent ledger")
    def recent_ledger(self, user: User) -> SafeString:
        entries = list(ledger_entries_for(user=user)[:RECENT_ROWS])
        rows = [
            (
                _when(entry.created_at),
                entry.get_category_display(),
                credits_text(entry.amount),
                credits_text(entry.balance_after),
                entry.description,
            )
            for entry in entries
        ]
        table = _table(("When", "Category", "Amount", "Balance after", "What"), rows, empty="No entries.")
        account = BillingAccount.objects.filter(user=user).only("pk").first()
        link = (
            _link(
                "credits.view_ledgerentry",
                "admin:credits_ledgerentry_changelist",
                f"account__id__exact={account.pk}",
                "Whole ledger →",
            )
            if account and rows
            else ""
        )
        return format_html("{}{}", table, link)

    @admin.display(description="Recent audit")
    def recent_audit(self, user: User) -> SafeString:
        events = AuditEvent.objects.filter(subject=user).select_related("actor")[:RECENT_ROWS]
        rows = [
            (
                _when(event.created_at),
                event.event,
                event.target,
                event.outcome,
                event.actor.email if event.actor else "system",
            )
            for event in events
        ]
        table = _table(("When", "Event", "Target", "Outcome", "By"), rows, empty="No audit rows.")
        link = _link(
            "accounts.view_auditevent",
            "admin:accounts_auditevent_changelist",
            f"subject__id__exact={user.pk}",
            "All audit rows →",
        )
        return format_html("{}{}", table, link if rows else "")
