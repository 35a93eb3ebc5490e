"""Reads for routing: what a user may call right now, and their recent calls."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.models import User
from byok.models import KeyStatus, ProviderKey
from byok.selectors import provider_key_effective_status, provider_key_list
from core import errors
from credits.models import BillingAccount
from credits.selectors import billing_account_for
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


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """What the dispatcher needs to choose a credential: the billing account (None until the
    first money movement creates it), the saved keys by provider, and the fallback setting."""

    account: BillingAccount | None
    keys: dict[str, ProviderKey]
    fallback_to_credits: bool

    @property
    def allows_byok(self) -> bool:
        return self.account is not None and self.account.allows_byok

    @property
    def apex_enabled(self) -> bool:
        return self.account is not None and self.account.apex_enabled


def routing_snapshot(*, user_id: int) -> RoutingSnapshot:
    """Everything the credential decision needs, read together."""
    return RoutingSnapshot(
        account=BillingAccount.objects.filter(user_id=user_id).first(),
        keys={key.provider: key for key in ProviderKey.objects.filter(user_id=user_id)},
        fallback_to_credits=RoutingPreference.objects.filter(user_id=user_id, fallback_to_credits=True).exists(),
    )
