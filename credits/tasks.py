"""Celery entry points for credits: thin, idempotent, calling services."""

from __future__ import annotations

from celery import shared_task

from credits.services import alerts
from credits.services.holds import credit_holds_expire


@shared_task(name="credits.tasks.expire_holds", ignore_result=True)
def expire_holds() -> int:
    """Beat tick: release every open hold past its expiry. Safe to run twice at once (each hold is
    expired under its own row lock, skipping rows another worker holds) or to be redelivered."""
    return credit_holds_expire()


@shared_task(name="credits.tasks.balance_alerts_dispatch", ignore_result=True)
def balance_alerts_dispatch() -> int:
    """Beat tick: notify every low-balance crossing not yet sent. Safe to run twice at once (rows
    are locked with skip_locked and marked sent in the notification's transaction) or to be
    redelivered (each notification's event key is its alert row's id)."""
    return alerts.balance_alerts_dispatch()
