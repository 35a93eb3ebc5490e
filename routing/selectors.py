"""Reads for routing: what a user may call right now, and their recent calls."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.models import User
from byok.models import KeyStatus
from byok.selectors import provider_key_effective_status, provider_key_list
from credits.selectors import billing_account_for
from niyra import errors
from routing.catalog import MODELS, CatalogModel, Kind
from routing.models import KeySource, RoutedCall, RoutingPreference


@dataclass(frozen=True, slots=True)
class ModelAvailability:
    model: CatalogModel
    available: bool
    key_source: str | None  # what would pay for the next call: "byok", "platform" or None
    reason_code: str | None = None
    reason: str | None = None


def _unavailable(model: CatalogModel, spec: errors.ErrorSpec) -> ModelAvailability:
    return ModelAvailability(model, False, None, spec.code, spec.message)


def model_availability_list(*, user: User) -> list[ModelAvailability]:
    """Every catalog model this user can see, with whether (and how) they can call it now.

    Apex is hidden entirely without the entitlement (the page: "Apex doesn't appear").
    """
    account = billing_account_for(user=user)
    statuses = {key.provider: provider_key_effective_status(key) for key in provider_key_list(user=user)}
    result: list[ModelAvailability] = []
    for model in MODELS:
        if model.requires_apex and not account.apex_enabled:
            continue
        status = statuses.get(model.provider) if model.kind == Kind.CHAT else None
        if status is not None and not account.allows_byok:
            result.append(_unavailable(model, errors.PLAN_KEY_UNUSABLE))
        elif status == KeyStatus.INVALID:
            result.append(_unavailable(model, errors.KEY_REJECTED))
        elif status == KeyStatus.NEEDS_REENTRY:
            result.append(_unavailable(model, errors.KEY_NEEDS_REENTRY))
        elif status is not None:
            result.append(ModelAvailability(model, True, KeySource.BYOK))
        elif model.byok_only:
            spec = errors.APEX_NEEDS_KEY if account.allows_byok else errors.PLAN_NO_BYOK
            result.append(_unavailable(model, spec))
        elif account.available <= 0:
            result.append(_unavailable(model, errors.INSUFFICIENT_CREDITS))
        else:
            result.append(ModelAvailability(model, True, KeySource.PLATFORM))
    return result


def routed_call_recent(*, user: User, limit: int = 20) -> QuerySet[RoutedCall]:
    return RoutedCall.objects.filter(user=user).order_by("-created_at")[:limit]


def routing_fallback_enabled(*, user: User) -> bool:
    return RoutingPreference.objects.filter(user=user, fallback_to_credits=True).exists()
