from django.urls import URLPattern, URLResolver, path

from connections import apis

urlpatterns: list[URLPattern | URLResolver] = [
    path("oauth/integrations", apis.OAuthIntegrationListApi.as_view(), name="api-oauth-integration-list"),
    path("oauth/connections", apis.OAuthConnectionListApi.as_view(), name="api-oauth-connection-list"),
    path("oauth/connections/<slug:integration>", apis.OAuthConnectionApi.as_view(), name="api-oauth-connection"),
    path(
        "oauth/connections/<slug:integration>/connect",
        apis.OAuthConnectStartApi.as_view(),
        name="api-oauth-connection-connect",
    ),
]
