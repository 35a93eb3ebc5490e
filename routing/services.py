"""Writes of the routing app: the routed-call log and routing preferences."""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any

from django.db import transaction

from accounts.models import User
from accounts.services import audit_event_record
from core import errors
from core.errors import NiyraError
from routing.models import RoutedCall, RoutingPreference


def routed_call_record(
    *,
    call_id: uuid.UUID,
    user: User,
    model: str,
    provider: str,
    kind: str,
    key_source: str,
    stream: bool,
    tokens_in: int,
    tokens_out: int,
    tokens_cached: int,
    credits_charged: int,
    latency_ms: int,
    outcome: str,
    fell_back: bool = False,
) -> RoutedCall:
    """Append the call to the log. ``fell_back``: the call was retried on credits after the
    user's own key was rate-limited or out of quota."""
    call = RoutedCall(
        id=call_id,
        user=user,
        model=model,
        provider=provider,
        kind=kind,
        key_source=key_source,
        stream=stream,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        tokens_cached=tokens_cached,
        credits_charged=credits_charged,
        latency_ms=latency_ms,
        outcome=outcome,
        fell_back=fell_back,
    )
    call.save(force_insert=True)
    return call


class Keep(Enum):
    """A setting left as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP
CAP_MAX_MC = 1_000_000_000_000  # a billion credits a day: beyond any account, within bigint
CAP_TOO_SMALL = "A daily cap must be more than 0: leave it empty for no cap, or turn the fallback off."
CAP_TOO_LARGE = "A daily cap is at most 1,000,000,000 credits: leave it empty for no cap."


@transaction.atomic
def routing_preference_set(
    *,
    user: User,
    fallback_to_credits: bool,
    fallback_daily_cap_mc: int | Keep | None = KEEP,
    actor: User | None = None,
) -> RoutingPreference:
    """The fallback to credits on or off, and its daily cap in millicredits (None: no cap;
    `KEEP`: as it is). A cap of 0 is refused: "off" is ``fallback_to_credits=False``."""
    if isinstance(fallback_daily_cap_mc, int) and not 1 <= fallback_daily_cap_mc <= CAP_MAX_MC:
        problem = CAP_TOO_SMALL if fallback_daily_cap_mc < 1 else CAP_TOO_LARGE
        raise NiyraError(errors.INVALID_INPUT, detail={"fallback_daily_cap_mc": [problem]})
    preference, _ = RoutingPreference.objects.select_for_update().get_or_create(user=user)
    changed: dict[str, Any] = {}
    if preference.fallback_to_credits != fallback_to_credits:
        changed["fallback_to_credits"] = preference.fallback_to_credits = fallback_to_credits
    if fallback_daily_cap_mc is not KEEP and preference.fallback_daily_cap_mc != fallback_daily_cap_mc:
        changed["fallback_daily_cap_mc"] = preference.fallback_daily_cap_mc = fallback_daily_cap_mc
    if changed:
        preference.save(update_fields=[*changed, "updated_at"])
        audit_event_record(actor=actor or user, subject=user, event="routing.fallback_changed", details=changed)
    return preference
