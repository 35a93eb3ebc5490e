from django.urls import URLPattern, URLResolver, path

from byok import apis

urlpatterns: list[URLPattern | URLResolver] = [
    path("keys", apis.ProviderKeyListApi.as_view(), name="api-provider-key-list"),
    path("keys/<slug:provider>", apis.ProviderKeyApi.as_view(), name="api-provider-key"),
    path("keys/<slug:provider>/test", apis.ProviderKeyTestApi.as_view(), name="api-provider-key-test"),
]
