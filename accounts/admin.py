"""Admin for users (email login), API tokens (prefix only) and the read-only audit trail.

The support overview on the user page (account, keys, connections, ledger) is added by the
`support` app, which reads every app; this one knows only accounts.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.http import HttpRequest

from accounts.login import ThrottledAdminAuthenticationForm
from accounts.models import ApiToken, AuditEvent, User
from core.admin import ReadOnlyAdmin

admin.site.login_form = ThrottledAdminAuthenticationForm  # the dashboard's sign-in budget, for staff too


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ("email",)
    list_display: tuple[str, ...] = ("email", "is_staff", "is_active", "date_joined", "last_login")
    search_fields = ("email",)
    fieldsets = (
        (None, {"fields": ("email", "password")}),
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


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    search_fields = ("user__email", "prefix", "name")
    list_select_related = ("user",)
    exclude = ("token_hash",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    # Short enough for a laptop (1280 px) beside the filters; actor, target and details are on
    # the event's page (and searchable here).
    list_display = ("created_at", "event", "subject", "outcome")
    list_filter = ("event", "outcome")
    search_fields = ("subject__email", "actor__email", "event", "target")
    list_select_related = ("subject", "actor")
    date_hierarchy = "created_at"
