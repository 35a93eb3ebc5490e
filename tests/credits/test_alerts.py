"""Low-balance alerts: the band the database keeps, one alert row per crossing whatever path moved
the money, one notification per alert row (and none more on a replay), and the thresholds'
rules on every surface that sets them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from core.errors import NiyraError
from credits import ledger_sql
from credits.models import AlertKind, BalanceAlert, BillingAccount
from credits.selectors import low_balance_for
from credits.services.alerts import balance_alerts_dispatch, credit_alert_thresholds_set
from credits.services.holds import Settlement, credit_hold, credit_settle
from credits.services.ledger import credit_adjust, credit_charge, credit_grant
from notifications.models import Kind, Notification
from tests.notifications.outbox import emails_deliver

CREDIT = 1_000
TOOL_CALL = 100  # millicredits per tool call (the price book)


def _alerts(user: Any) -> list[tuple[str, int | None, int | None]]:
    return list(
        BalanceAlert.objects.filter(account__user=user).order_by("id").values_list("kind", "band_from", "band_to")
    )


def _spend(user: Any, credits: int, key: str) -> None:
    credit_charge(user=user, category="tool_call", units=credits * CREDIT // TOOL_CALL, idempotency_key=key)


# --- The band and the alert rows (the trigger) ------------------------------------------------------


@pytest.mark.django_db
def test_each_crossing_down_is_one_alert_and_going_up_between_thresholds_is_quiet(user: Any) -> None:
    credit_grant(user=user, amount=150 * CREDIT, reason="start", idempotency_key="g1")
    account = BillingAccount.objects.get(user=user)
    assert (account.alert_thresholds, account.alert_band) == ([100_000, 20_000], None)

    _spend(user, 40, "c1")  # 110: still above both
    _spend(user, 20, "c2")  # 90: below 100
    _spend(user, 5, "c3")  # 85: the same band, nothing new
    assert _alerts(user) == [(AlertKind.LOW, None, 100_000)]

    _spend(user, 70, "c4")  # 15: below 20
    credit_grant(user=user, amount=30 * CREDIT, reason="a little", idempotency_key="g2")  # 45: up, still low
    _spend(user, 30, "c5")  # 15: below 20 again — a new crossing
    assert _alerts(user)[1:] == [(AlertKind.LOW, 100_000, 20_000), (AlertKind.LOW, 100_000, 20_000)]
    assert BillingAccount.objects.get(user=user).alert_band == 20_000


@pytest.mark.django_db
def test_depleted_and_recovered_once_each(user: Any) -> None:
    credit_grant(user=user, amount=150 * CREDIT, reason="start", idempotency_key="g1")
    _spend(user, 150, "all")  # straight to zero: one alert, "used up"
    with pytest.raises(NiyraError):
        _spend(user, 1, "more")  # refused: nothing moves, nothing new
    credit_grant(user=user, amount=50 * CREDIT, reason="some", idempotency_key="g2")  # low, quietly
    credit_grant(user=user, amount=100 * CREDIT, reason="enough", idempotency_key="g3")  # 150: recovered
    credit_grant(user=user, amount=100 * CREDIT, reason="more", idempotency_key="g4")  # still ok: nothing
    assert _alerts(user) == [(AlertKind.DEPLETED, None, 0), (AlertKind.RECOVERED, 100_000, None)]
    assert BalanceAlert.objects.get(kind=AlertKind.DEPLETED).balance == 0


@pytest.mark.django_db
def test_a_new_account_is_not_alerted_by_its_first_credits_but_shows_low(user: Any) -> None:
    credit_grant(user=user, amount=50 * CREDIT, reason="welcome", idempotency_key="w")
    assert _alerts(user) == []  # no balance crossed anything on its way down
    assert low_balance_for(user=user) is not None
    assert low_balance_for(user=user).threshold == 100_000  # type: ignore[union-attr]
    credit_grant(user=user, amount=100 * CREDIT, reason="more", idempotency_key="w2")
    assert _alerts(user) == []  # never warned: no "recovered" either
    assert low_balance_for(user=user) is None


@pytest.mark.django_db
def test_a_settled_hold_and_a_support_adjustment_cross_like_a_charge(user: Any, make_user: Any) -> None:
    credit_grant(user=user, amount=120 * CREDIT, reason="start", idempotency_key="g")
    hold = credit_hold(user=user, amount=30 * CREDIT, idempotency_key="h")
    assert _alerts(user) == []  # a reservation is not spend: the balance has not moved
    credit_settle(hold_id=hold.pk, actual_amount=25 * CREDIT, idempotency_key="h")  # 95
    staff = make_user("support@example.com", is_staff=True)
    credit_adjust(user=user, amount=-80 * CREDIT, reason="correction", idempotency_key="a", actor=staff)  # 15
    assert _alerts(user) == [(AlertKind.LOW, None, 100_000), (AlertKind.LOW, 100_000, 20_000)]


@pytest.mark.django_db
def test_changing_thresholds_moves_the_band_quietly_and_is_audited(user: Any) -> None:
    credit_grant(user=user, amount=150 * CREDIT, reason="start", idempotency_key="g")
    account = credit_alert_thresholds_set(user=user, thresholds=[20_000, 500_000])
    assert (account.alert_thresholds, account.alert_band) == ([500_000, 20_000], 500_000)
    assert _alerts(user) == []
    event = AuditEvent.objects.get(event="credits.alert_thresholds_changed")
    assert event.details == {"from": [100_000, 20_000], "to": [500_000, 20_000]}
    _spend(user, 140, "c")  # 10: below 20 — the next crossing is told
    assert _alerts(user) == [(AlertKind.LOW, 500_000, 20_000)]

    credit_alert_thresholds_set(user=user, thresholds=[])  # only "used up" now
    assert BillingAccount.objects.get(user=user).alert_band is None
    assert AuditEvent.objects.filter(event="credits.alert_thresholds_changed").count() == 2
    credit_alert_thresholds_set(user=user, thresholds=[])  # no change: no audit row
    assert AuditEvent.objects.filter(event="credits.alert_thresholds_changed").count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("thresholds", "says"),
    [
        ([0], "from 1 to 1,000,000,000"),
        ([-5_000], "from 1 to 1,000,000,000"),
        ([1_000_000_001], "from 1 to 1,000,000,000"),
        ([True], "whole number of millicredits"),
        ([1.5], "whole number of millicredits"),
        ([10_000, 10_000], "Each threshold once"),
        ([1, 2, 3, 4, 5, 6], "At most 5 thresholds"),
        ("100", "A list of amounts"),
    ],
)
def test_bad_thresholds_are_refused_with_the_reason(user: Any, thresholds: Any, says: str) -> None:
    with pytest.raises(NiyraError) as refused:
        credit_alert_thresholds_set(user=user, thresholds=thresholds)
    assert refused.value.code == "invalid_input"
    assert says in refused.value.detail["thresholds"][0]
    assert not AuditEvent.objects.filter(event="credits.alert_thresholds_changed").exists()


# --- From alert rows to notifications (the beat task) ----------------------------------------------


@pytest.mark.django_db
def test_dispatch_notifies_once_per_alert_and_a_replay_sends_nothing(user: Any, mailoutbox: list[Any]) -> None:
    credit_grant(user=user, amount=150 * CREDIT, reason="start", idempotency_key="g1")
    _spend(user, 60, "c1")  # 90: below 100
    _spend(user, 90, "c2")  # 0: used up
    credit_grant(user=user, amount=200 * CREDIT, reason="top up", idempotency_key="g2")  # recovered

    assert balance_alerts_dispatch() == 3
    notes = list(Notification.objects.filter(user=user).order_by("id"))
    assert [(n.kind, n.title) for n in notes] == [
        (Kind.CREDITS_LOW, "Your credits are below 100"),
        (Kind.CREDITS_DEPLETED, "Your credits are used up"),
        (Kind.CREDITS_RECOVERED, "Your credits are topped up again"),
    ]
    assert "90.000 credits, below the 100 credits" in notes[0].body
    assert "hosted LLM calls stop; calls on your own keys continue" in notes[1].body
    assert "200.000 credits" in notes[2].body
    assert {n.link for n in notes} == {"/credits/"}
    alert_ids = list(BalanceAlert.objects.order_by("id").values_list("id", flat=True))
    assert [n.event_key for n in notes] == [f"credits:{notes[0].user.billing_account.pk}:alert:{i}" for i in alert_ids]
    assert len(emails_deliver()) == 3

    # Replays: the task again; and even rows marked undispatched again send nothing (the
    # notification's event key is the alert row's id).
    assert balance_alerts_dispatch() == 0
    BalanceAlert.objects.update(dispatched_at=None)
    assert balance_alerts_dispatch() == 3
    assert Notification.objects.filter(user=user).count() == 3
    assert len(emails_deliver()) == 3
    assert len(mail.outbox) == 3


# --- Every path at once, on real transactions ------------------------------------------------------


def _gateway_settle(user: Any, key: str, amount: int) -> None:
    """Settle a hold the way the gateway does: the same `credits.ledger_sql` statement, on a
    connection of its own (not Django's), in autocommit."""
    hold = credit_hold(user=user, amount=amount, idempotency_key=key)
    settlement = Settlement(actual_amount=amount, usage=None, key=key, extra={})
    requested, params = settlement.price(hold)
    statement = ledger_sql.hold_settle(
        hold_id=hold.pk,
        requested=requested,
        resolution_key=key,
        resolution_fingerprint=params,
        entry=settlement.entry(hold, actual=requested, params=params),
        now=timezone.now(),
    )
    db = connection.settings_dict
    with psycopg.connect(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None, host=db["HOST"], port=db["PORT"] or None
    ) as raw:
        raw.autocommit = True
        assert raw.execute(statement.sql, statement.params).fetchone() is not None


@pytest.mark.django_db(transaction=True)
def test_crossings_under_concurrent_charges_from_every_path_notify_exactly_once(
    make_user: Any, connections_for: Callable[[int], None], mailoutbox: list[Any]
) -> None:
    """Twelve charges of 12.5 credits race from 150 to 0, a third each through the metering
    service, the gateway's settle statement and a support adjustment: below 100, below 20 and
    used up are each recorded once; two dispatchers racing send each once."""
    threads = 12
    connections_for(threads + 2)
    user = make_user()
    staff = make_user("support@example.com", is_staff=True)
    credit_grant(user=user, amount=150 * CREDIT, reason="start", idempotency_key="seed")
    start = threading.Barrier(threads)
    problems: list[str] = []

    def charge(i: int) -> None:
        connection.ensure_connection()
        try:
            start.wait()
            if i % 3 == 0:
                credit_charge(user=user, category="tool_call", units=125, idempotency_key=f"c{i}")
            elif i % 3 == 1:
                _gateway_settle(user, f"g{i}", 12_500)
            else:
                credit_adjust(user=user, amount=-12_500, reason="race", idempotency_key=f"a{i}", actor=staff)
        except Exception as exc:  # pragma: no cover - shown by the assertion
            problems.append(repr(exc))
        finally:
            connection.close()

    workers = [threading.Thread(target=charge, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert problems == []
    assert BillingAccount.objects.get(user=user).balance == 0
    assert _alerts(user) == [
        (AlertKind.LOW, None, 100_000),
        (AlertKind.LOW, 100_000, 20_000),
        (AlertKind.DEPLETED, 20_000, 0),
    ]

    sent: list[int] = [0, 0]

    def dispatch(i: int) -> None:
        try:
            sent[i] = balance_alerts_dispatch()
        finally:
            connection.close()

    dispatchers = [threading.Thread(target=dispatch, args=(i,)) for i in range(2)]
    for dispatcher in dispatchers:
        dispatcher.start()
    for dispatcher in dispatchers:
        dispatcher.join(timeout=30)
    assert sum(sent) == 3
    assert balance_alerts_dispatch() == 0
    kinds = sorted(Notification.objects.filter(user=user).values_list("kind", flat=True))
    assert kinds == sorted([Kind.CREDITS_LOW, Kind.CREDITS_LOW, Kind.CREDITS_DEPLETED])
    assert len(emails_deliver()) == 3
    call_command("reconcile_ledger")  # the new table and columns leave the books as they were


# --- The REST API ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_reads_and_replaces_the_thresholds(funded_user: Any, user_client: APIClient) -> None:
    assert user_client.get("/api/credits/alerts").json() == {"thresholds": [100_000, 20_000], "below": None}
    response = user_client.put("/api/credits/alerts", {"thresholds": [50_000, 500_000]}, format="json")
    assert response.status_code == 200
    assert response.json() == {"thresholds": [500_000, 50_000], "below": 500_000}
    assert user_client.put("/api/credits/alerts", {"thresholds": []}, format="json").json()["thresholds"] == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field_says"),
    [
        ({"thresholds": [10_000, 10_000]}, "Each threshold once"),
        ({"thresholds": [0]}, "from 1 to"),
        ({"thresholds": ["100"]}, "valid integer"),
        ({}, "required"),
    ],
)
def test_api_refuses_bad_thresholds_and_says_why(
    funded_user: Any, user_client: APIClient, body: dict[str, Any], field_says: str
) -> None:
    response = user_client.put("/api/credits/alerts", body, format="json")
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "invalid_input"
    assert field_says in str(payload["detail"]["thresholds"])
    assert BillingAccount.objects.get(user=funded_user).alert_thresholds == [100_000, 20_000]
