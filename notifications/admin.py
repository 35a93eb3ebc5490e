"""Support sees what a user was told and whether the email went out (read-only: notifications are
written by the services that noticed the events)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("created_at", "user", "kind", "title", "email_status", "read_at")
    list_filter = ("kind", "email_status")
    search_fields = ("user__email", "title")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = tuple(f.name for f in Notification._meta.fields)
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Notification | None = None) -> bool:
        return False
