"""The per-user budget for asking a provider about a key (save and test), API and dashboard alike.

A key-checking endpoint is an oracle worth abusing, so what is counted is what the oracle
costs: a round trip to the provider. A request refused before that (empty, wrong provider,
malformed, no key to test) spends nothing. `key_probe_budget_spend` is called by
`byok.services` right before each probe.

The window starts at a user's first probe and lasts the rate's period; the counts live in the
shared cache (an atomic increment, so parallel requests cannot slip past the limit). While the
cache is down, probes are let through, logged: a cache outage must not take key management down
with it, and the provider's own limits still apply to each probe.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from redis.exceptions import RedisError

from accounts.metrics import throttle_refusal_record
from core.errors import THROTTLED, NiyraError

logger = logging.getLogger(__name__)

SAVE = "byok_save"
TEST = "byok_test"
# Used when the settings name no rate for a scope: never unthrottled.
DEFAULT_RATES = {SAVE: "10/hour", TEST: "30/hour"}
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _rate(scope: str) -> tuple[int, int]:
    """(probes, seconds) from REST_FRAMEWORK's DEFAULT_THROTTLE_RATES, written as DRF writes
    them ("10/hour"), so one setting names the budget of the API and the dashboard."""
    framework: dict[str, Any] = settings.REST_FRAMEWORK
    rates: dict[str, str] = framework.get("DEFAULT_THROTTLE_RATES") or {}
    rate = str(rates.get(scope) or DEFAULT_RATES[scope])
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.strip()[0]]


def wait_in_words(seconds: int) -> str:
    """A wait as a person says it: "in a few seconds", "in about 5 minutes", "in about an hour"."""
    if seconds < 45:
        return "in a few seconds"
    if seconds < 90:
        return "in about a minute"
    if seconds < 45 * 60:
        return f"in about {round(seconds / 60)} minutes"
    if seconds < 90 * 60:
        return "in about an hour"
    return f"in about {round(seconds / 3600)} hours"


def throttled_error(wait: int) -> NiyraError:
    """The catalogue's `throttled`, saying the real wait (message, detail and Retry-After)."""
    return NiyraError(
        THROTTLED,
        message=f"Too many requests. Try again {wait_in_words(wait)}.",
        detail={"retry_after_seconds": wait},
        headers={"Retry-After": str(wait)},
    )


def key_probe_budget_spend(*, user_id: int, scope: str) -> None:
    """Count one probe against the user's budget for `scope`; raise `throttled` past it."""
    limit, period = _rate(scope)
    now = time.time()
    start_key = f"byok-probes:{scope}:{user_id}:start"
    try:
        cache.add(start_key, now, period)
        start = float(cache.get(start_key, now))
        count_key = f"byok-probes:{scope}:{user_id}:{int(start * 1000)}"
        cache.add(count_key, 0, period + 60)  # outlives its window a little; the key names it
        try:
            count = int(cache.incr(count_key))
        except ValueError:  # expired between add and incr: this probe starts a new count
            cache.set(count_key, 1, period + 60)
            count = 1
    except (RedisError, OSError) as exc:
        logger.warning("byok throttle %s skipped: the cache is unavailable (%s)", scope, type(exc).__name__)
        return
    if count > limit:
        throttle_refusal_record(scope=scope)
        raise throttled_error(max(1, math.ceil(start + period - now)))
