from django.urls import URLPattern, URLResolver, path

from byok import apis

urlpatterns: list[URLPattern | URLResolver] = [
    path("keys", apis.ProviderKeyListApi.as_view(), name="api-provider-key-list"),
    path("keys/<slug:provider>", apis.ProviderKeyApi.as_view(), name="api-provider-key"),
    path("keys/<slug:provider>/test", apis.ProviderKeyTestApi.as_view(), name="api-provider-key-test"),
    path("oauth/integrations", apis.OAuthIntegrationListApi.as_view(), name="api-oauth-integration-list"),
    path("oauth/connections", apis.OAuthConnectionListApi.as_view(), name="api-oauth-connection-list"),
    path("oauth/connections/<slug:integration>", apis.OAuthConnectionApi.as_view(), name="api-oauth-connection"),
    path(
        "oauth/connections/<slug:integration>/connect",
        apis.OAuthConnectStartApi.as_view(),
        name="api-oauth-connection-connect",
    ),
]
