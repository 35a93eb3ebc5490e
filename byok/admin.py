"""Admin for support staff: key status at a glance, never key material; Disconnect goes through
the service."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.auth import request_user
from byok.models import KeyCheck, ProviderKey
from byok.selectors import provider_key_effective_status
from byok.services import provider_key_disconnect
from core.errors import NiyraError


class KeyCheckInline(admin.TabularInline):
    """The key's recent checks and what each said (read-only; byok.services keeps it short)."""

    model = KeyCheck
    fields = ("checked_at", "source", "status", "error_code", "latency_ms", "fingerprint")
    readonly_fields = fields
    ordering = ("-checked_at", "-id")
    extra = 0
    can_delete = False
    verbose_name = "check"
    verbose_name_plural = "Recent checks"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Part of the key's page: whoever may see the key (support) sees its history.
        return request.user.has_perm("byok.view_providerkey")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    # Short enough for a laptop (1280 px) beside the filters; the rest is on the key's page.
    list_display = ("user_email", "provider", "effective_status", "hint", "last_checked_at")
    list_filter = ("provider", "status")
    search_fields = ("user__email", "hint", "fingerprint")
    list_select_related = ("user",)
    ordering = ("user__email", "provider")
    # An explicit list: the ciphertext (and anything added later) is never on a page.
    fields = (
        "user",
        "provider",
        "effective_status",
        "hint",
        "fingerprint",
        "last_error_code",
        "rate_limited_until",
        "last_used_at",
        "last_checked_at",
        "last_tested_at",
        "next_check_at",
        "status_changes",
        "encryption_key_id",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    inlines = (KeyCheckInline,)
    actions = ("disconnect",)

    @admin.display(description="User", ordering="user__email")
    def user_email(self, obj: ProviderKey) -> str:
        return obj.user.email

    @admin.display(description="Status", ordering="status")
    def effective_status(self, obj: ProviderKey) -> str:
        return provider_key_effective_status(obj).replace("_", " ")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are pasted by their owners, through the API or the dashboard

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a raw delete would skip the audit row: use the Disconnect action

    def has_disconnect_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("byok.delete_providerkey")

    @admin.action(description="Disconnect selected keys (the users go back to credits)", permissions=["disconnect"])
    def disconnect(self, request: HttpRequest, queryset: QuerySet[ProviderKey]) -> None:
        done = 0
        for provider_key in queryset.select_related("user"):
            try:
                provider_key_disconnect(
                    user=provider_key.user, provider=provider_key.provider, actor=request_user(request)
                )
            except NiyraError:
                continue  # disconnected meanwhile
            done += 1
        self.message_user(request, f"Disconnected {done} key(s).", messages.SUCCESS)
