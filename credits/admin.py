from __future__ import annotations

from django.contrib import admin

from accounts.admin import ReadOnlyAdmin
from credits.models import BillingAccount, LedgerEntry


@admin.register(BillingAccount)
class BillingAccountAdmin(ReadOnlyAdmin):
    list_display = ("user", "plan", "apex_enabled", "balance", "reserved", "updated_at")
    list_filter = ("plan", "apex_enabled")
    search_fields = ("user__email",)
    list_select_related = ("user",)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "account", "category", "amount", "balance_after", "description")
    list_filter = ("category",)
    search_fields = ("account__user__email", "idempotency_key")
    list_select_related = ("account__user",)
    date_hierarchy = "created_at"
