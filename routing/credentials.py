"""Whose credential pays for a call: the one rule, used by the dispatcher and the models list.

A pure function of the routing snapshot (plan, Apex entitlement, saved keys, fallback setting)
and the model: no database, no decryption, no clock beyond the key's status. Refusals are the
catalogue's specific errors; nothing here silently switches a user from their key to credits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from byok.models import KeyStatus, ProviderKey
from byok.selectors import provider_key_effective_status
from core import errors
from core.errors import NiyraError
from credits.models import BillingAccount, KeySource
from routing.catalog import CatalogModel, Kind


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """What the credential decision needs, read together: the billing account (None until the
    first money movement creates it), the saved keys by provider, and the fallback setting (with
    its daily cap in millicredits, None: no cap)."""

    account: BillingAccount | None
    keys: dict[str, ProviderKey]
    fallback_to_credits: bool
    fallback_daily_cap_mc: int | None = None

    @property
    def allows_byok(self) -> bool:
        return self.account is not None and self.account.allows_byok

    @property
    def apex_enabled(self) -> bool:
        return self.account is not None and self.account.apex_enabled

    @property
    def available(self) -> int:
        """Millicredits free to hold (zero without an account)."""
        return self.account.available if self.account is not None else 0


@dataclass(frozen=True, slots=True)
class Credential:
    """The decision: the user's own key (``provider_key``, no LLM charge) or the platform key
    (credits). ``fallback_allowed``: a BYOK call may be retried on credits after the user's
    429 or quota error (the user opted in; never for BYOK-only models)."""

    key_source: KeySource
    provider_key: ProviderKey | None = None
    fallback_allowed: bool = False


PLATFORM = Credential(KeySource.PLATFORM)


def credential_decide(*, model: CatalogModel, snapshot: RoutingSnapshot, platform_only: bool = False) -> Credential:
    """The credential for a call of ``model``, or the specific error that stops it.

    BYOK covers chat (LLM) calls only; ``platform_only`` is for calls that must run on credits
    (embeddings and voice, and the retry on credits after a fallback-eligible error).
    """
    if model.requires_apex and not snapshot.apex_enabled:
        raise NiyraError(errors.APEX_NOT_ENABLED)
    may_use_key = model.kind == Kind.CHAT and not platform_only
    key = snapshot.keys.get(model.provider) if may_use_key else None
    if key is not None:
        if not snapshot.allows_byok:
            raise NiyraError(errors.PLAN_KEY_UNUSABLE, detail={"provider": model.provider})
        status = provider_key_effective_status(key)
        if status == KeyStatus.INVALID:
            raise NiyraError(errors.KEY_REJECTED, detail={"provider": model.provider})
        if status == KeyStatus.NEEDS_REENTRY:
            raise NiyraError(errors.KEY_NEEDS_REENTRY, detail={"provider": model.provider})
        return Credential(KeySource.BYOK, key, fallback_allowed=not model.byok_only and snapshot.fallback_to_credits)
    if model.byok_only:
        raise NiyraError(errors.APEX_NEEDS_KEY if snapshot.allows_byok or not may_use_key else errors.PLAN_NO_BYOK)
    return PLATFORM


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


def model_availability(*, snapshot: RoutingSnapshot, models: Iterable[CatalogModel]) -> list[ModelAvailability]:
    """Whether (and how) each model can be called now: the credential decision itself, on the
    caller's snapshot. Apex is left out without the entitlement (the page: "Apex doesn't appear")."""
    result: list[ModelAvailability] = []
    for model in models:
        try:
            credential = credential_decide(model=model, snapshot=snapshot)
        except NiyraError as refusal:
            if refusal.spec is not errors.APEX_NOT_ENABLED:
                result.append(ModelAvailability(model, False, None, refusal.code, refusal.message))
            continue
        if credential.key_source == KeySource.PLATFORM and snapshot.available <= 0:
            spec = errors.INSUFFICIENT_CREDITS
            result.append(ModelAvailability(model, False, None, spec.code, spec.message))
            continue
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
