"""Prometheus metrics of credits (core.metrics): what usage was charged, the open holds and their
sweeper, and the scheduled ledger reconcile.

A charge is counted once, when it is committed: where it runs in a transaction, only when that
commits (so a rolled-back charge never counts), and never for an idempotent replay (its
service returns the first entry without posting one). The gauges are set by beat's ticks, in
whichever worker process ran the latest one ("mostrecent" across processes).
"""

from __future__ import annotations

import time

from django.db import transaction
from django.utils import timezone
from prometheus_client import Counter, Gauge

from core.metrics import enabled
from credits.models import USAGE_CATEGORIES, LedgerEntry
from credits.selectors import open_holds_summary

_CATEGORIES = frozenset(str(category) for category in USAGE_CATEGORIES)

CREDITS_CHARGED = Counter(
    "niyra_credits_charged_millicredits_total",
    "Millicredits charged for usage (committed charges and settlements), by category.",
    ["category"],
)
HOLDS_OPEN = Gauge("niyra_holds_open", "Credit holds open, at the latest sweep.", multiprocess_mode="mostrecent")
HOLDS_OLDEST_AGE = Gauge(
    "niyra_holds_oldest_age_seconds",
    "Age of the oldest open credit hold at the latest sweep (0 when none is open).",
    multiprocess_mode="mostrecent",
)
HOLDS_EXPIRED = Counter("niyra_holds_expired_total", "Credit holds the sweeper expired (their call never closed).")
RECONCILE_MISMATCHES = Gauge(
    "niyra_ledger_reconcile_mismatches",
    "Billing accounts that disagreed with their ledger at the latest scheduled reconcile.",
    multiprocess_mode="mostrecent",
)
RECONCILE_LAST_RUN = Gauge(
    "niyra_ledger_reconcile_last_run_timestamp_seconds",
    "Unix time the latest scheduled ledger reconcile finished.",
    multiprocess_mode="mostrecent",
)


def credits_charged(*, category: str, amount: int) -> None:
    """Count ``amount`` millicredits charged under ``category``: call it once the charge is
    committed (the gateway's close, in autocommit) or through `entry_charged_on_commit`."""
    if not enabled() or amount <= 0 or category not in _CATEGORIES:
        return
    CREDITS_CHARGED.labels(category).inc(amount)


def entry_charged_on_commit(entry: LedgerEntry) -> None:
    """Count what a charge's or a settlement's new entry took when its transaction commits: right
    away outside one, never if it rolls back."""
    if not enabled() or entry.amount >= 0:
        return
    category, amount = str(entry.category), -entry.amount
    transaction.on_commit(lambda: credits_charged(category=category, amount=amount))


def holds_observe(*, expired: int) -> None:
    """Record a sweep: the holds it expired, and the open holds as they stand after it."""
    if not enabled():
        return
    if expired:
        HOLDS_EXPIRED.inc(expired)
    summary = open_holds_summary()
    HOLDS_OPEN.set(summary.count)
    oldest = summary.oldest_created_at
    HOLDS_OLDEST_AGE.set(max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else 0)


def reconcile_observe(*, mismatches: int) -> None:
    """Record a finished reconcile: how many accounts disagreed, and when."""
    if not enabled():
        return
    RECONCILE_MISMATCHES.set(mismatches)
    RECONCILE_LAST_RUN.set(time.time())
