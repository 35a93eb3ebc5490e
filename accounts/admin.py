"""Admin for users, API tokens (prefix only) and the read-only audit trail.

The user page is support's one-stop view of a customer: account (plan, balance, reserved,
Apex), keys (status and hint only), connections, recent ledger entries and audit rows, each with
a link to the admin page whose actions change it through the services (grant/adjust credits,
change plan, Apex, disconnect a key, refresh a connection). Support staff get exactly those
permissions from the "Support" group (accounts.support); the user itself is view-only to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from accounts.login import ThrottledAdminAuthenticationForm
from accounts.models import ApiToken, AuditEvent, User
from byok.models import ConnectionStatus, KeyStatus
from byok.selectors import connection_list, provider_key_effective_status, provider_key_list
from credits.models import BillingAccount
from credits.pricing import MILLICREDITS_PER_CREDIT
from credits.selectors import ledger_entries_for

RECENT_ROWS = 10

admin.site.login_form = ThrottledAdminAuthenticationForm  # the dashboard's sign-in budget, for staff too


def _credits(millicredits: int) -> str:
    sign = "-" if millicredits < 0 else ""
    whole, fraction = divmod(abs(millicredits), MILLICREDITS_PER_CREDIT)
    return f"{sign}{whole:,}.{fraction:03d}"


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


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ("email",)
    list_display = ("email", "plan", "available_credits", "is_staff", "is_active", "date_joined", "last_login")
    list_select_related = ("billing_account",)
    search_fields = ("email",)
    support_fields = ("account_summary", "keys_summary", "connections_summary", "recent_ledger", "recent_audit")
    readonly_fields = support_fields
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Support overview", {"fields": support_fields}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        obj.username = obj.email
        super().save_model(request, obj, form, change)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            # View-only staff (support): no password hash summary and no "Reset password" button.
            first_name, first = fieldsets[0]
            first = {**first, "fields": tuple(f for f in first["fields"] if f != "password")}
            fieldsets = ((first_name, first), *fieldsets[1:])
        return fieldsets

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
        return _credits(account.available) if account else "-"

    # --- the support overview (read-only; reads only, never creates anything) ---

    @admin.display(description="Account")
    def account_summary(self, user: User) -> SafeString:
        account = BillingAccount.objects.filter(user=user).first()
        if account is None:
            return format_html('<p class="help">{}</p>', "No billing account yet (free plan, no credits).")
        rows = [
            (
                account.get_plan_display(),
                _credits(account.balance),
                _credits(account.reserved),
                _credits(account.available),
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
            "byok.view_oauthconnection",
            "admin:byok_oauthconnection_changelist",
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
                _credits(entry.amount),
                _credits(entry.balance_after),
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


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    search_fields = ("user__email", "prefix", "name")
    list_select_related = ("user",)
    exclude = ("token_hash",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "event", "subject", "actor", "target", "outcome")
    list_filter = ("event", "outcome")
    search_fields = ("subject__email", "actor__email", "event", "target")
    list_select_related = ("subject", "actor")
    date_hierarchy = "created_at"
