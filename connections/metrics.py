"""The OAuth refresh daemon's metrics: whether it keeps its promise that no token ever lapses.

Labels: `integration` is a slug from settings.OAUTH_INTEGRATIONS ("other" for anything else, e.g.
a row whose integration was since removed), `outcome` one of REFRESH_OUTCOMES. Never a token.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram

from core.metrics import TASK_LATENCY_BUCKETS, enabled

# How each refresh attempt ended: `connections.services.RefreshResult.outcome`, with "failed"
# split by what follows (the task retries it, or the next tick does) and "refreshed" by whether
# the old token had already expired (a broken promise, though the connection works again).
REFRESH_OUTCOMES = frozenset(
    {
        "refreshed",
        "refreshed_lapsed",
        "fresh",  # not due (any more): another worker or a reconnect got there first
        "locked",  # someone else holds the row (refreshing it), or the on-demand wait timed out
        "gone",
        "inactive",  # needs_reauth, or error without force: never retried by the daemon
        "needs_reauth",
        "retry",
        "failed",
        "error",  # failed once too often: gave up
    }
)
# Seconds before the old token's expiry a refresh happened. The tick refreshes 120-420 s ahead
# (margin, interval + margin by default); a short-lived token's follow-up, less. A lapsed
# refresh counts as 0 (its outcome says it lapsed), so the `le="0"` bucket counts lapses.
MARGIN_BUCKETS = (0.0, 1.0, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 420.0, 600.0, 1200.0, 3600.0)

REFRESH_TICK_SECONDS = Histogram(
    "niyra_oauth_refresh_tick_duration_seconds",
    "Duration of the OAuth refresh tick (the due query, the purge and queuing the refreshes).",
    buckets=TASK_LATENCY_BUCKETS,
)
REFRESH_DUE = Gauge(
    "niyra_oauth_refresh_due",
    "OAuth connections found due for a refresh by the latest tick.",
    multiprocess_mode="mostrecent",
)
REFRESHES = Counter(
    "niyra_oauth_refreshes_total",
    "OAuth refresh attempts by integration and how they ended.",
    ["integration", "outcome"],
)
REFRESH_MARGIN_SECONDS = Histogram(
    "niyra_oauth_refresh_margin_seconds",
    "Seconds before the old access token expired that each successful refresh happened (0: it had lapsed).",
    buckets=MARGIN_BUCKETS,
)
REFRESH_WORST_MARGIN_SECONDS = Gauge(
    "niyra_oauth_refresh_worst_margin_seconds",
    "Smallest margin of the latest refresh over active connections; negative when a token lapsed. "
    "NaN when no active connection has a margin yet.",
    multiprocess_mode="mostrecent",
)


def integration_label(integration: str) -> str:
    """`integration` if it is configured, else "other": the label's values stay a known set."""
    configured = getattr(settings, "OAUTH_INTEGRATIONS", {}) or {}
    return integration if integration in configured else "other"


def refresh_outcome(outcome: str, *, retrying: bool, margin_seconds: float | None) -> str:
    """The metric's outcome for a `RefreshResult`'s (see REFRESH_OUTCOMES)."""
    if outcome == "failed" and retrying:
        return "retry"
    if outcome == "refreshed" and margin_seconds is not None and margin_seconds < 0:
        return "refreshed_lapsed"
    return outcome if outcome in REFRESH_OUTCOMES else "failed"


def oauth_refresh_record(*, integration: str, outcome: str, retrying: bool, margin_seconds: float | None) -> None:
    """One refresh attempt's end; a successful one's margin (`margin_seconds`, None: the old
    token did not expire) goes to the histogram, clamped at 0."""
    if not enabled():
        return
    REFRESHES.labels(
        integration_label(integration), refresh_outcome(outcome, retrying=retrying, margin_seconds=margin_seconds)
    ).inc()
    if outcome == "refreshed" and margin_seconds is not None:
        REFRESH_MARGIN_SECONDS.observe(max(0.0, margin_seconds))


@contextlib.contextmanager
def oauth_refresh_tick_timed() -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        if enabled():
            REFRESH_TICK_SECONDS.observe(time.perf_counter() - started)


def oauth_refresh_tick_record(*, due: int, worst_margin_seconds: float | None) -> None:
    """What the latest tick found: connections due, and the worst margin (None: nothing to measure)."""
    if not enabled():
        return
    REFRESH_DUE.set(due)
    REFRESH_WORST_MARGIN_SECONDS.set(math.nan if worst_margin_seconds is None else worst_margin_seconds)
