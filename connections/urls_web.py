"""Browser routes of connections (not under /api/): the OAuth callback.

Included from niyra/urls.py with `path("", include("connections.urls_web"))`.
"""

from django.urls import URLPattern, URLResolver, path

from connections import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("oauth/callback/<slug:integration>", views.oauth_callback, name="oauth-callback"),
]
