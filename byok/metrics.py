"""Provider keys' health as metrics: how many keys are in each status, what each validation
request said, and every status change (the alert: keys invalidated per hour).

Labels: `provider` from Provider, `status` from KeyStatus, `outcome` from VALIDATION_OUTCOMES.
Never a key, a hint or a fingerprint. Throttle refusals are counted in accounts.metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.db import transaction
from prometheus_client import Counter, Gauge

from byok.models import KeyStatus
from core.errors import KEY_INVALID, KEY_QUOTA_EXHAUSTED, KEY_RATE_LIMITED
from core.metrics import enabled
from providers import Provider

# What a validation request (`ProbeResult.code`) said about a key. Anything else (the provider
# unreachable, an error of its own) said nothing: "unavailable".
_VALIDATION_OUTCOME_FOR_CODE = {
    "ok": "valid",
    KEY_INVALID.code: "invalid",
    KEY_RATE_LIMITED.code: "rate_limited",
    KEY_QUOTA_EXHAUSTED.code: "quota_exhausted",
}
VALIDATION_OUTCOMES = frozenset({*_VALIDATION_OUTCOME_FOR_CODE.values(), "unavailable"})

PROVIDER_KEYS = Gauge(
    "niyra_provider_keys",
    "Saved provider keys by provider and health status (set by the key health tick).",
    ["provider", "status"],
    multiprocess_mode="mostrecent",
)
KEY_VALIDATIONS = Counter(
    "niyra_key_validations_total",
    "Validation requests made of a key (save, Test key, the scheduled check), by what the provider said.",
    ["provider", "outcome"],
)
KEY_STATUS_CHANGES = Counter(
    "niyra_key_status_changes_total",
    "Saved keys whose status changed, by the status they moved to.",
    ["provider", "status"],
)


def provider_keys_set(counts: Mapping[tuple[str, str], int]) -> None:
    """The keys per (provider, status); every pair is set, 0 when absent, so a count that drops
    to zero shows as zero instead of keeping its last value."""
    if not enabled():
        return
    for provider in Provider.values:
        for status in KeyStatus.values:
            PROVIDER_KEYS.labels(provider, status).set(counts.get((provider, status), 0))


def key_validation_record(*, provider: str, code: str) -> None:
    """One validation request made of a `provider` key; `code` is its `ProbeResult.code`."""
    if not enabled():
        return
    KEY_VALIDATIONS.labels(provider, _VALIDATION_OUTCOME_FOR_CODE.get(code, "unavailable")).inc()


def key_status_change_record(*, provider: str, status: str) -> None:
    """A saved key moved to `status`: counted once the transaction that records it commits, so
    a change rolled back is never counted."""
    if not enabled():
        return
    transaction.on_commit(lambda: KEY_STATUS_CHANGES.labels(provider, status).inc())
