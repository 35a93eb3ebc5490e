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
from niyra import rawsql
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
    """One read for the whole routing decision (one statement on PostgreSQL, three elsewhere)."""
    if not rawsql.enabled():
        return RoutingSnapshot(
            account=BillingAccount.objects.filter(user_id=user_id).first(),
            keys={key.provider: key for key in ProviderKey.objects.filter(user_id=user_id)},
            fallback_to_credits=RoutingPreference.objects.filter(user_id=user_id, fallback_to_credits=True).exists(),
        )
    account_fields, account_columns = rawsql.select_list(BillingAccount, "a")
    key_fields, key_columns = rawsql.select_list(ProviderKey, "k")
    sql = (
        f"SELECT COALESCE(p.fallback_to_credits, FALSE), a.id IS NOT NULL, {account_columns}, k.id IS NOT NULL,"  # noqa: S608 - identifiers from model metadata; values are bound
        f" {key_columns} FROM {rawsql.quote(User._meta.db_table)} u"
        f" LEFT JOIN {rawsql.quote(BillingAccount._meta.db_table)} a ON a.user_id = u.id"
        f" LEFT JOIN {rawsql.quote(RoutingPreference._meta.db_table)} p ON p.user_id = u.id"
        f" LEFT JOIN {rawsql.quote(ProviderKey._meta.db_table)} k ON k.user_id = u.id"
        " WHERE u.id = %s"
    )
    with rawsql.db().cursor() as cursor:
        cursor.execute(sql, [user_id])
        rows = cursor.fetchall()
    if not rows:
        return RoutingSnapshot(account=None, keys={}, fallback_to_credits=False)
    first = rows[0]
    key_start = 2 + len(account_fields) + 1
    account = rawsql.from_row(BillingAccount, account_fields, first[2 : key_start - 1]) if first[1] else None
    keys = {}
    for row in rows:
        if row[key_start - 1]:
            key = rawsql.from_row(ProviderKey, key_fields, row[key_start:])
            keys[key.provider] = key
    return RoutingSnapshot(account=account, keys=keys, fallback_to_credits=bool(first[0]))
