"""REST: balance, ledger (cursor pages, filters), usage breakdown, and the metering endpoint."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from credits.models import LedgerEntry
from credits.pricing import Usage, price_usage
from credits.services.holds import credit_hold, credit_settle
from credits.services.ledger import credit_charge, credit_usage_record
from tests.credits.conftest import CREDIT

pytestmark = pytest.mark.django_db

EVENTS = "/api/usage-events"


def test_balance_shows_available_reserved_and_plan(user_client: APIClient, funded_user: Any) -> None:
    credit_hold(user=funded_user, amount=2_500, idempotency_key="h")
    response = user_client.get("/api/credits/balance")
    assert response.status_code == 200
    assert response.json() == {
        "plan": "free",
        "apex_enabled": False,
        "available": 100 * CREDIT - 2_500,
        "reserved": 2_500,
        "balance": 100 * CREDIT,
        "unit": "millicredit",
    }


def test_credit_endpoints_need_authentication(api_client: APIClient) -> None:
    for url in ("/api/credits/balance", "/api/credits/ledger", "/api/credits/usage"):
        assert api_client.get(url).json()["code"] == "not_authenticated"


def test_ledger_is_cursor_paginated_newest_first(user_client: APIClient, funded_user: Any) -> None:
    for i in range(5):
        credit_charge(user=funded_user, category="tool_call", units=1, idempotency_key=f"t-{i}")
    first = user_client.get("/api/credits/ledger", {"limit": 4}).json()
    assert [e["idempotency_key"] for e in first["results"]] == ["t-4", "t-3", "t-2", "t-1"]
    second = APIClient.get(user_client, first["next"]).json()
    assert [e["idempotency_key"] for e in second["results"]] == ["t-0", "fund-1"]
    assert second["next"] is None


def test_ledger_filters_by_category_and_dates(user_client: APIClient, funded_user: Any) -> None:
    credit_charge(user=funded_user, category="tool_call", units=1, idempotency_key="t")
    credit_charge(user=funded_user, category="telephony", units=60, idempotency_key="p")
    body = user_client.get("/api/credits/ledger", {"category": "telephony"}).json()
    assert [e["idempotency_key"] for e in body["results"]] == ["p"]
    future = (timezone.now() + timedelta(hours=1)).isoformat()
    assert user_client.get("/api/credits/ledger", {"since": future}).json()["results"] == []
    assert len(user_client.get("/api/credits/ledger", {"until": future}).json()["results"]) == 3
    bad = user_client.get("/api/credits/ledger", {"category": "teleportation"})
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_input")


def test_ledger_shows_only_my_entries(user_client: APIClient, funded_user: Any, make_user: Any, fund: Any) -> None:
    fund(make_user())
    assert len(user_client.get("/api/credits/ledger").json()["results"]) == 1


def test_usage_breakdown(user_client: APIClient, funded_user: Any) -> None:
    credit_charge(user=funded_user, category="tool_call", units=2, idempotency_key="t")  # 200 mc
    hold = credit_hold(user=funded_user, model="claude-haiku-4", worst=Usage(2_000, 2_000), idempotency_key="c")
    credit_settle(hold_id=hold.pk, usage=Usage(1_000, 1_000, 0))
    llm = price_usage("claude-haiku-4", Usage(1_000, 1_000))  # 600 mc
    credit_usage_record(user=funded_user, model="gpt-5", usage=Usage(5_000, 700, 100), idempotency_key="b")
    body = user_client.get("/api/credits/usage").json()
    assert body["by_category"]["tool_call"] == 200
    assert body["by_category"]["llm"] == llm
    assert body["by_category"]["telephony"] == 0
    assert body["total"] == 200 + llm
    assert body["llm_share"] == "0.7500"
    assert body["hosted_llm"] == {
        "calls": 1,
        "input_tokens": 1_000,
        "output_tokens": 1_000,
        "cached_tokens": 0,
        "credits": llm,
    }
    assert body["byok_llm"] == {
        "calls": 1,
        "input_tokens": 5_000,
        "output_tokens": 700,
        "cached_tokens": 100,
        "credits": 0,
    }


def test_usage_breakdown_period_rules(user_client: APIClient, funded_user: Any) -> None:
    now = timezone.now()
    empty = user_client.get("/api/credits/usage", {"start": (now - timedelta(days=400)).isoformat()})
    assert (empty.status_code, empty.json()["code"]) == (400, "invalid_period")
    past = user_client.get(
        "/api/credits/usage",
        {"start": (now - timedelta(days=10)).isoformat(), "end": (now - timedelta(days=9)).isoformat()},
    ).json()
    assert (past["total"], past["llm_share"]) == (0, "0.0000")


# --- metering -----------------------------------------------------------------------------


def _event(**overrides: Any) -> dict[str, Any]:
    return {"user": "ada@example.com", "category": "tool_call", "units": 2, "idempotency_key": "ev-1"} | overrides


def test_service_token_charges_a_usage_event(service_client: APIClient, funded_user: Any) -> None:
    response = service_client.post(EVENTS, _event(details={"tool": "slack.post"}), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["amount"], body["category"], body["units"], body["details"]) == (
        -200,
        "tool_call",
        2,
        {"tool": "slack.post"},
    )
    replay = service_client.post(EVENTS, _event(details={"tool": "slack.post"}), format="json")
    assert replay.json()["id"] == body["id"]
    assert LedgerEntry.objects.filter(idempotency_key="ev-1").count() == 1


def test_user_can_be_named_by_id(service_client: APIClient, funded_user: Any) -> None:
    response = service_client.post(EVENTS, _event(user=funded_user.pk), format="json")
    assert response.status_code == 201


def test_metering_refuses_a_user_token_and_changes_nothing(user_client: APIClient, funded_user: Any) -> None:
    response = user_client.post(EVENTS, _event(), format="json")
    assert (response.status_code, response.json()["code"]) == (403, "permission_denied")
    assert LedgerEntry.objects.count() == 1


def test_metering_refuses_anonymous(api_client: APIClient, funded_user: Any) -> None:
    assert api_client.post(EVENTS, _event(), format="json").status_code == 401


def test_metering_not_enough_credits(service_client: APIClient, user: Any, fund: Any) -> None:
    fund(user, 150)
    response = service_client.post(EVENTS, _event(), format="json")
    assert (response.status_code, response.json()["code"]) == (402, "insufficient_credits")
    assert response.json()["detail"] == {"available": 150, "required": 200}


def test_metering_idempotency_conflict(service_client: APIClient, funded_user: Any) -> None:
    service_client.post(EVENTS, _event(), format="json")
    response = service_client.post(EVENTS, _event(units=3), format="json")
    assert (response.status_code, response.json()["code"]) == (409, "idempotency_conflict")


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"units": 0}, "invalid_input"),
        ({"units": -1}, "invalid_input"),
        ({"units": 1.5}, "invalid_input"),
        ({"units": 2.0}, "invalid_input"),
        ({"units": "2"}, "invalid_input"),
        ({"units": True}, "invalid_input"),
        ({"category": "teleportation"}, "unknown_category"),
        ({"category": "llm"}, "unknown_category"),
        ({"idempotency_key": ""}, "invalid_input"),
        ({"idempotency_key": "k" * 129}, "invalid_input"),
        ({"idempotency_key": None}, "invalid_input"),
        ({"user": "nobody@example.com"}, "user_not_found"),
        ({"user": 987654}, "user_not_found"),
        ({"details": "text"}, "invalid_input"),
    ],
)
def test_bad_usage_events_are_400_and_write_nothing(
    service_client: APIClient, funded_user: Any, overrides: dict[str, Any], code: str
) -> None:
    response = service_client.post(EVENTS, _event(**overrides), format="json")
    assert (response.status_code, response.json()["code"]) == (400, code), response.json()
    assert LedgerEntry.objects.count() == 1


def test_missing_fields_are_named(service_client: APIClient, funded_user: Any) -> None:
    response = service_client.post(EVENTS, {}, format="json")
    assert response.status_code == 400
    assert set(response.json()["detail"]) == {"user", "category", "units", "idempotency_key"}


def test_schema_generates(user_client: APIClient) -> None:
    # drf-spectacular walks every view; a broken serializer here would break /api/docs/.
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert "/api/usage-events" in schema["paths"]
    assert "/api/credits/ledger" in schema["paths"]
