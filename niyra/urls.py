"""URL configuration. API routes live under /api/; the gateway's /v1/, /anthropic/ and /openai/
are served in front of Django (niyra.asgi)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts import login
from accounts import views as accounts_views
from byok import views as byok_views
from connections import views as connections_views
from core import errors, health
from credits import views as credits_views
from dashboard import views
from notifications import views as notifications_views
from routing import views as routing_views

# The dashboard (server-rendered pages; htmx for the parts that change). Each app owns its views.
dashboard_patterns = [
    path("", views.home, name="home"),
    path("try/", routing_views.try_message, name="try"),
    path("credits/", credits_views.ledger, name="credits"),
    path("credits/ledger.csv", credits_views.ledger_csv, name="credits-csv"),
    path("credits/alerts", credits_views.alert_thresholds_update, name="credits-alerts"),
    path("credits/spend-per-day.csv", credits_views.spend_daily_csv, name="credits-spend-daily-csv"),
    path("credits/spend-per-model.csv", credits_views.spend_models_csv, name="credits-spend-models-csv"),
    path("settings/byok/", byok_views.byok_settings, name="byok"),
    path("settings/byok/<slug:provider>/save", byok_views.byok_key_save, name="byok-save"),
    path("settings/byok/<slug:provider>/test", byok_views.byok_key_test, name="byok-test"),
    path("settings/byok/<slug:provider>/disconnect", byok_views.byok_key_disconnect, name="byok-disconnect"),
    path("settings/connections/", connections_views.connections, name="connections"),
    path(
        "settings/connections/<slug:integration>/connect",
        connections_views.connection_connect,
        name="connection-connect",
    ),
    path(
        "settings/connections/<slug:integration>/disconnect",
        connections_views.connection_disconnect_view,
        name="connection-disconnect",
    ),
    path("notifications/", notifications_views.notifications_page, name="notifications"),
    path("notifications/read", notifications_views.notifications_read, name="notifications-read"),
    path("settings/notifications/", notifications_views.notification_settings, name="notification-settings"),
    path("settings/tokens/", accounts_views.tokens, name="tokens"),
    path("settings/tokens/create", accounts_views.token_create, name="token-create"),
    path("settings/tokens/<int:token_id>/revoke", accounts_views.token_revoke, name="token-revoke"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("login/", login.LoginView.as_view(), name="login"),  # throttled sign-in
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include((dashboard_patterns, "dashboard"))),
    path("", include("connections.urls_web")),  # the OAuth callback (a browser redirect from the provider)
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script as a file: the CSP allows no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("accounts.urls")),
    path("api/", include("byok.urls")),
    path("api/", include("connections.urls")),
    path("api/", include("credits.urls")),
    path("api/", include("notifications.urls")),
    path("", include("routing.urls")),
    # Anything else under the API prefix is a JSON 404, whatever DEBUG says (the gateway's
    # prefixes never reach Django: routing.gateway.asgi answers them).
    re_path(r"^api/", errors.api_not_found),
]

handler404 = "core.errors.handler404"
handler500 = "core.errors.handler500"
