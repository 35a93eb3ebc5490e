"""Browser routes of byok (not under /api/): the OAuth callback.

Included from niyra/urls.py with `path("", include("byok.urls_web"))`.
"""

from django.urls import URLPattern, URLResolver, path

from byok import views_oauth

urlpatterns: list[URLPattern | URLResolver] = [
    path("oauth/callback/<slug:integration>", views_oauth.oauth_callback, name="oauth-callback"),
]
