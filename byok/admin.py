"""Admin for support staff: key and connection status at a glance, never key or token material;
disconnect and "refresh now" go through the services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.auth import request_user
from byok.models import OAuthConnection, ProviderKey
from byok.selectors import provider_key_effective_status
from byok.services import connection_refresh_request, provider_key_disconnect
from core.errors import NiyraError


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    list_display = (
        "user_email",
        "provider",
        "effective_status",
        "hint",
        "last_tested_at",
        "last_error_code",
        "updated_at",
    )
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
        "last_tested_at",
        "last_error_code",
        "encryption_key_id",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
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


@admin.register(OAuthConnection)
class OAuthConnectionAdmin(admin.ModelAdmin):
    """Connections by user email, with status and failures; tokens are never on a page."""

    list_display = (
        "user_email",
        "integration",
        "status",
        "expires_at",
        "last_refreshed_at",
        "consecutive_failures",
        "last_error_code",
        "last_error_reason",
    )
    list_filter = ("status", "integration")
    search_fields = ("user__email", "integration")
    list_select_related = ("user",)
    ordering = ("user__email", "integration")
    # An explicit list: the token ciphertexts (and anything added later) are never on a page.
    fields = (
        "user",
        "integration",
        "status",
        "scopes",
        "expires_at",
        "token_issued_at",
        "last_refreshed_at",
        "consecutive_failures",
        "last_error_code",
        "last_error_reason",
        "last_error_at",
        "has_refresh_token",
        "encryption_key_id",
        "connected_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    actions = ("refresh_now",)

    @admin.display(description="User", ordering="user__email")
    def user_email(self, obj: OAuthConnection) -> str:
        return obj.user.email

    @admin.display(description="Refresh token", boolean=True)
    def has_refresh_token(self, obj: OAuthConnection) -> bool:
        return bool(obj.refresh_token_ciphertext)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # users connect through the provider's consent screen

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a raw delete would skip the audit row and the revocation

    def has_refresh_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("byok.change_oauthconnection")

    @admin.action(description="Refresh now (through the refresh task)", permissions=["refresh"])
    def refresh_now(self, request: HttpRequest, queryset: QuerySet[OAuthConnection]) -> None:
        queued = sum(
            connection_refresh_request(connection_id=pk, actor=request_user(request))
            for pk in queryset.values_list("pk", flat=True)
        )
        self.message_user(request, f"Queued a refresh for {queued} connection(s).", messages.SUCCESS)
