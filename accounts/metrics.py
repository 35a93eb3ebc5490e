"""Throttle refusals, counted here because the lowest throttle lives here (the sign-in one);
byok's key-check budget counts through the same counter.

`scope` is a fixed name per throttle: "signin" (accounts.login), "byok_save" and "byok_test"
(byok.throttle). No DRF throttle class is in use (DEFAULT_THROTTLE_RATES only names byok's rates).
"""

from __future__ import annotations

from prometheus_client import Counter

from core.metrics import enabled

SIGNIN = "signin"

THROTTLE_REFUSALS = Counter(
    "niyra_throttle_refusals_total",
    "Requests a throttle refused, by throttle (signin, byok_save, byok_test).",
    ["scope"],
)


def throttle_refusal_record(*, scope: str) -> None:
    if not enabled():
        return
    THROTTLE_REFUSALS.labels(scope).inc()
