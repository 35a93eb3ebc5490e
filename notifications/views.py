"""Dashboard pages of notifications: the in-app list (Settings → Notifications shows what Niyra
told you, newest first) and the email preferences per kind. Thin: writes go through services."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.auth import request_user
from core.pages import dashboard_login_required
from notifications.models import Kind
from notifications.selectors import email_kinds_enabled, notification_list
from notifications.services import email_preferences_set, notifications_mark_read

PAGE_SIZE = 50


@require_GET
@dashboard_login_required
def notifications_page(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    page = Paginator(notification_list(user=user), PAGE_SIZE).get_page(request.GET.get("page"))
    return TemplateResponse(request, "notifications/list.html", {"page": page})


@require_POST
@dashboard_login_required(return_to="dashboard:notifications")
def notifications_read(request: HttpRequest) -> HttpResponse:
    notifications_mark_read(user=request_user(request))
    return redirect("dashboard:notifications")


@require_http_methods(["GET", "POST"])
@dashboard_login_required(return_to="dashboard:notification-settings")
def notification_settings(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    if request.method == "POST":
        chosen = [kind for kind in request.POST.getlist("email") if kind in Kind.values]
        email_preferences_set(user=user, emailed_kinds=chosen)
        messages.success(request, "Saved. Notifications stay in your list whatever you choose here.")
        return redirect("dashboard:notification-settings")
    enabled = email_kinds_enabled(user=user)
    kinds = [(kind.value, kind.label, kind.value in enabled) for kind in Kind]
    return TemplateResponse(request, "notifications/settings.html", {"kinds": kinds})
