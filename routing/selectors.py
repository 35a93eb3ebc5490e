"""Reads for routing: what a user may call right now, and their recent calls."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from byok.models import ProviderKey
from routing.catalog import MODELS
from routing.credentials import ModelAvailability, RoutingSnapshot, model_availability
from routing.models import FallbackSpend, RoutedCall


def model_availability_list(*, user: User) -> list[ModelAvailability]:
    """Every catalog model this user can see, with whether (and how) they can call it now: the
    gateway's own credential decision (`routing.credentials.model_availability`), on a snapshot
    read now (so "not enough credits" is today's balance)."""
    return model_availability(snapshot=routing_snapshot(user_id=user.pk), models=MODELS)


def routed_call_recent(*, user: User, limit: int = 20) -> QuerySet[RoutedCall]:
    return RoutedCall.objects.filter(user=user).order_by("-created_at")[:limit]


def fallback_spend_today(*, user: User) -> int:
    """Millicredits the fallback to credits has taken from today's cap (UTC): charged, plus the
    worst case of calls in flight."""
    spend = FallbackSpend.objects.filter(user=user, day=timezone.now().date()).first()
    return spend.used_mc if spend is not None else 0


def routed_call_get(*, user: User, call_id: uuid.UUID) -> RoutedCall | None:
    """One of this user's routed calls (None for another user's: the same as an unknown id).
    A call has a row once it is closed."""
    return RoutedCall.objects.filter(user=user, pk=call_id).first()


def routing_snapshot(*, user_id: int) -> RoutingSnapshot:
    """Everything the credential decision needs, in two queries: the user's billing account and
    routing preference (joined), and their saved keys."""
    user = User.objects.select_related("billing_account", "routing_preference").filter(pk=user_id).first()
    if user is None:
        return RoutingSnapshot(account=None, keys={}, fallback_to_credits=False)
    account = getattr(user, "billing_account", None)  # None: no row yet (a reverse one-to-one)
    preference = getattr(user, "routing_preference", None)
    return RoutingSnapshot(
        account=account,
        keys={key.provider: key for key in ProviderKey.objects.filter(user_id=user_id)},
        fallback_to_credits=preference is not None and preference.fallback_to_credits,
        fallback_daily_cap_mc=preference.fallback_daily_cap_mc if preference is not None else None,
    )
