from django.urls import path

from accounts import apis

urlpatterns = [
    path("tokens", apis.TokenListApi.as_view(), name="api-token-list"),
    path("tokens/create", apis.TokenCreateApi.as_view(), name="api-token-create"),
    path("tokens/<int:token_id>", apis.TokenRevokeApi.as_view(), name="api-token-revoke"),
]
