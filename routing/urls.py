"""Routing URLs of Niyra's own API. The providers' APIs (/v1/, /anthropic/, /openai/) are served
by the gateway's ASGI app in front of Django (routing.gateway.asgi)."""

from django.urls import path

from routing import apis, views

urlpatterns = [
    path("api/llm/messages", apis.messages_create, name="llm-messages"),
    path("api/llm/models", apis.ModelListApi.as_view(), name="llm-models"),
    path("api/llm/calls/<uuid:call_id>", apis.CallReceiptApi.as_view(), name="llm-call"),
    path("api/llm/preferences", apis.PreferencesApi.as_view(), name="llm-preferences"),
    # Settings → BYOK's fallback panel (the page is byok's; the panel and its form are routing's).
    path("settings/byok/fallback", views.fallback_settings, name="routing-fallback"),
]
