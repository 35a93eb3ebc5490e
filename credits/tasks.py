"""Celery entry points for credits: thin, idempotent, calling services."""

from __future__ import annotations

import logging

from celery import shared_task

from credits import metrics
from credits.selectors import ledger_mismatches
from credits.services import alerts
from credits.services.holds import credit_holds_expire

logger = logging.getLogger(__name__)


@shared_task(name="credits.tasks.expire_holds", ignore_result=True)
def expire_holds() -> int:
    """Beat tick: release every open hold past its expiry. Safe to run twice at once (each hold is
    expired under its own row lock, skipping rows another worker holds) or to be redelivered.
    Then records the open holds left (their count and the oldest's age)."""
    expired = credit_holds_expire()
    metrics.holds_observe(expired=expired)
    return expired


@shared_task(name="credits.tasks.balance_alerts_dispatch", ignore_result=True)
def balance_alerts_dispatch() -> int:
    """Beat tick: notify every low-balance crossing not yet sent. Safe to run twice at once (rows
    are locked with skip_locked and marked sent in the notification's transaction) or to be
    redelivered (each notification's event key is its alert row's id)."""
    return alerts.balance_alerts_dispatch()


@shared_task(name="credits.tasks.ledger_reconcile", ignore_result=True)
def ledger_reconcile() -> int:
    """Beat tick: `manage.py reconcile_ledger`'s check, on a schedule. Logs each account that
    disagrees with its ledger (by id: the metric and the log carry no email) and returns how
    many did; the count is a gauge an alert watches. Read-only, so safe to repeat."""
    mismatches = ledger_mismatches()
    for mismatch in mismatches:
        logger.error("ledger mismatch: account %s: %s", mismatch.account_id, "; ".join(mismatch.problems))
    metrics.reconcile_observe(mismatches=len(mismatches))
    return len(mismatches)
