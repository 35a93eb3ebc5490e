"""Credits metrics: a committed charge counts once, by category (a replay or a rollback: not at
all); the sweeper's tick sets the open-hold gauges and counts what it expired; the scheduled
reconcile sets its gauges and logs each account that disagrees, by id."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from credits.models import BillingAccount, CreditHold
from credits.services.holds import credit_hold, credit_settle, credit_void
from credits.services.ledger import credit_charge
from credits.tasks import expire_holds, ledger_reconcile

pytestmark = pytest.mark.django_db

EVENTS = "/api/usage-events"


def charged(category: str) -> float:
    return REGISTRY.get_sample_value("niyra_credits_charged_millicredits_total", {"category": category}) or 0.0


def sample(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_a_committed_charge_counts_once_by_category(
    service_client: APIClient, funded_user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    before = charged("tool_call")
    event = {"user": funded_user.pk, "category": "tool_call", "units": 2, "idempotency_key": "ev-1"}

    with django_capture_on_commit_callbacks(execute=True):
        first = service_client.post(EVENTS, event, format="json")
        replay = service_client.post(EVENTS, event, format="json")

    assert (first.status_code, replay.json()["id"]) == (201, first.json()["id"])
    assert charged("tool_call") - before == 200  # 2 tool calls at 100 mc, the replay not again


def test_a_rolled_back_charge_does_not_count(funded_user: Any, django_capture_on_commit_callbacks: Any) -> None:
    before = charged("telephony")

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        credit_charge(user=funded_user, category="telephony", units=60, idempotency_key="p")
        raise RuntimeError("the caller's transaction fails after the charge")

    assert charged("telephony") == before


def test_a_settlement_counts_what_it_charged(funded_user: Any, django_capture_on_commit_callbacks: Any) -> None:
    hold = credit_hold(user=funded_user, amount=500, category="voice_tts", idempotency_key="h")
    before = charged("voice_tts")

    with django_capture_on_commit_callbacks(execute=True):
        credit_settle(hold_id=hold.pk, actual_amount=300, idempotency_key="s")
        credit_settle(hold_id=hold.pk, actual_amount=300, idempotency_key="s")  # a replay

    assert charged("voice_tts") - before == 300


def test_expire_tick_counts_expired_holds_and_sets_the_open_gauges(funded_user: Any) -> None:
    late = credit_hold(user=funded_user, amount=300, idempotency_key="late")
    live = credit_hold(user=funded_user, amount=200, idempotency_key="live")
    now = timezone.now()
    CreditHold.objects.filter(pk=late.pk).update(expires_at=now - timedelta(seconds=1))
    CreditHold.objects.filter(pk=live.pk).update(created_at=now - timedelta(seconds=120))
    expired_before = sample("niyra_holds_expired_total") or 0.0

    assert expire_holds.apply().get() == 1

    assert sample("niyra_holds_expired_total") == expired_before + 1
    assert sample("niyra_holds_open") == 1
    assert 120 <= (sample("niyra_holds_oldest_age_seconds") or 0) < 180

    credit_void(hold_id=live.pk)
    assert expire_holds.apply().get() == 0
    assert (sample("niyra_holds_open"), sample("niyra_holds_oldest_age_seconds")) == (0, 0)
    assert sample("niyra_holds_expired_total") == expired_before + 1


def test_reconcile_task_sets_its_gauges_and_logs_mismatches_by_account_id(
    funded_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    credit_hold(user=funded_user, amount=500, idempotency_key="h")
    started = time.time()

    assert ledger_reconcile.apply().get() == 0
    assert sample("niyra_ledger_reconcile_mismatches") == 0
    assert (sample("niyra_ledger_reconcile_last_run_timestamp_seconds") or 0) >= started

    BillingAccount.objects.filter(user=funded_user).update(balance=99_000)  # a bug outside the services
    with caplog.at_level(logging.ERROR, logger="credits.tasks"):
        assert ledger_reconcile.apply().get() == 1

    assert sample("niyra_ledger_reconcile_mismatches") == 1
    account_id = BillingAccount.objects.get(user=funded_user).pk
    [line] = [record.getMessage() for record in caplog.records if record.name == "credits.tasks"]
    assert f"account {account_id}: balance 99000 != sum of entries 100000" in line
    assert funded_user.email not in line
