"""Admin for support staff: connection status, failures and the refresh schedule at a glance,
never token material; "refresh now" goes through the service (an audited, forced run of the
refresh task)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.auth import request_user
from connections.models import OAuthConnection
from connections.selectors import connection_health
from connections.services import connection_refresh_request


@admin.register(OAuthConnection)
class OAuthConnectionAdmin(admin.ModelAdmin):
    """Connections by user email, with status and failures; tokens are never on a page."""

    list_display = (
        "user_email",
        "integration",
        "status",
        "expires_at",
        "last_refreshed_at",
        "next_refresh_at",
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
        "health_note",
        "expires_at",
        "token_issued_at",
        "last_refreshed_at",
        "next_refresh",
        "consecutive_failures",
        "last_failure",
        "last_error_code",
        "last_error_reason",
        "last_error_at",
        "status_changes",
        "status_changed_at",
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

    @admin.display(description="Next refresh (about)")
    def next_refresh_at(self, obj: OAuthConnection) -> datetime | None:
        return connection_health(obj).next_refresh_at

    @admin.display(description="Next refresh")
    def next_refresh(self, obj: OAuthConnection) -> str:
        return connection_health(obj).next_refresh

    @admin.display(description="Last failure (what the user reads)")
    def last_failure(self, obj: OAuthConnection) -> str:
        return connection_health(obj).last_failure or "-"

    @admin.display(description="Health")
    def health_note(self, obj: OAuthConnection) -> str:
        return connection_health(obj).note or "-"

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
        return request.user.has_perm("connections.change_oauthconnection")

    @admin.action(description="Refresh now (through the refresh task)", permissions=["refresh"])
    def refresh_now(self, request: HttpRequest, queryset: QuerySet[OAuthConnection]) -> None:
        queued = sum(
            connection_refresh_request(connection_id=pk, actor=request_user(request))
            for pk in queryset.values_list("pk", flat=True)
        )
        self.message_user(request, f"Queued a refresh for {queued} connection(s).", messages.SUCCESS)
