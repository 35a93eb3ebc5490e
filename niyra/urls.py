"""URL configuration. API routes live under /api/ (and /v1/ for OpenAI compatibility)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from niyra import errors, health, views

dashboard_patterns = [
    path("", views.home, name="home"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include((dashboard_patterns, "dashboard"))),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("accounts.urls")),
    path("api/", include("byok.urls")),
    path("api/", include("credits.urls")),
    path("", include("routing.urls")),
    # Anything else under the API prefixes is a JSON 404, whatever DEBUG says.
    re_path(r"^(?:api|v1)/", errors.api_not_found),
]

handler404 = "niyra.errors.handler404"
handler500 = "niyra.errors.handler500"
