"""Reads for routing: what a user may call right now, and their recent calls."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.models import User
from byok.models import ProviderKey
from byok.selectors import provider_key_effective_status
from core import errors
from core.errors import NiyraError
from credits.models import KeySource
from routing.catalog import MODELS, CatalogModel
from routing.credentials import RoutingSnapshot, credential_decide
from routing.models import RoutedCall


@dataclass(frozen=True, slots=True)
class ModelAvailability:
    model: CatalogModel
    available: bool
    key_source: str | None  # what would pay for the next call: "byok", "platform" or None
    reason_code: str | None = None
    reason: str | None = None
    # On the user's key: its status ("quota_exhausted" and "rate_limited" still route: the call
    # may succeed, or fall back to credits when the user opted in, ``fallback_allowed``).
    key_status: str | None = None
    fallback_allowed: bool = False


def model_availability_list(*, user: User) -> list[ModelAvailability]:
    """Every catalog model this user can see, with whether (and how) they can call it now:
    the dispatcher's own credential decision, on the same snapshot.

    Apex is hidden entirely without the entitlement (the page: "Apex doesn't appear").
    """
    snapshot = routing_snapshot(user_id=user.pk)
    result: list[ModelAvailability] = []
    for model in MODELS:
        try:
            credential = credential_decide(model=model, snapshot=snapshot)
        except NiyraError as refusal:
            if refusal.spec is not errors.APEX_NOT_ENABLED:
                result.append(ModelAvailability(model, False, None, refusal.code, refusal.message))
            continue
        if credential.key_source == KeySource.PLATFORM and snapshot.available <= 0:
            spec = errors.INSUFFICIENT_CREDITS
            result.append(ModelAvailability(model, False, None, spec.code, spec.message))
        else:
            key = credential.provider_key
            result.append(
                ModelAvailability(
                    model,
                    True,
                    credential.key_source,
                    key_status=provider_key_effective_status(key) if key is not None else None,
                    fallback_allowed=credential.fallback_allowed,
                )
            )
    return result


def routed_call_recent(*, user: User, limit: int = 20) -> QuerySet[RoutedCall]:
    return RoutedCall.objects.filter(user=user).order_by("-created_at")[:limit]


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
    )
