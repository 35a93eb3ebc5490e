"""Writes of the routing app: the routed-call log and routing preferences."""

from __future__ import annotations

import uuid

from django.db import transaction

from accounts.models import User
from accounts.services import audit_event_record
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


@transaction.atomic
def routing_preference_set(*, user: User, fallback_to_credits: bool, actor: User | None = None) -> RoutingPreference:
    preference, _ = RoutingPreference.objects.select_for_update().get_or_create(user=user)
    if preference.fallback_to_credits != fallback_to_credits:
        preference.fallback_to_credits = fallback_to_credits
        preference.save(update_fields=["fallback_to_credits", "updated_at"])
        audit_event_record(
            actor=actor or user,
            subject=user,
            event="routing.fallback_changed",
            details={"fallback_to_credits": fallback_to_credits},
        )
    return preference
