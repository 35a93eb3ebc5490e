from django.urls import URLPattern, URLResolver, path

from credits import apis

urlpatterns: list[URLPattern | URLResolver] = [
    path("me", apis.MeApi.as_view(), name="api-me"),
    path("credits/balance", apis.BalanceApi.as_view(), name="api-credits-balance"),
    path("credits/ledger", apis.LedgerListApi.as_view(), name="api-credits-ledger"),
    path("credits/alerts", apis.AlertThresholdsApi.as_view(), name="api-credits-alerts"),
    path("credits/usage", apis.UsageBreakdownApi.as_view(), name="api-credits-usage"),
    path("usage-events", apis.UsageEventCreateApi.as_view(), name="api-usage-events"),
]
