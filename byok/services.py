"""Every write to provider keys, each with its audit row in the same transaction.

Order of a save: provider, plan, format, the user's probe budget (`byok.throttle`), then one
real request to the provider — with no database transaction open — and only then encrypt and
write. The plaintext key lives in these functions' locals for the duration of the call and
nowhere else: not on a model instance, not in a cache, a session, a task, a log line, an audit
row or an exception (every function that holds it is `sensitive_variables`, so Django's error
reports show stars).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from accounts.services import audit_event_record
from byok.keytext import check_key_format, key_fingerprint, key_hint, normalise_key
from byok.models import KeyStatus, Provider, ProviderKey, provider_key_purpose
from byok.selectors import provider_key_get, provider_key_plaintext
from byok.throttle import SAVE, TEST, key_probe_budget_spend
from core.crypto import get_keyring
from core.errors import (
    KEY_INVALID,
    KEY_NEEDS_REENTRY,
    KEY_NOT_FOUND,
    KEY_QUOTA_EXHAUSTED,
    KEY_RATE_LIMITED,
    PLAN_NO_BYOK,
    THIRD_PARTY_PROVIDER,
    NiyraError,
)
from credits.selectors import billing_account_for
from providers import ProbeResult, get_adapter

logger = logging.getLogger(__name__)

# What a probe's outcome says about a key. Anything else (provider unavailable) says nothing.
_STATUS_FOR_OUTCOME = {
    "ok": KeyStatus.VALID,
    KEY_INVALID.code: KeyStatus.INVALID,
    KEY_RATE_LIMITED.code: KeyStatus.RATE_LIMITED,
    KEY_QUOTA_EXHAUSTED.code: KeyStatus.QUOTA_EXHAUSTED,
}


def supported_provider(provider: str) -> str:
    """`provider` if Niyra takes keys for it; else the catalogue's "no third-party providers"."""
    normalised = provider.strip().lower()
    if normalised not in Provider.values:
        # No detail: whatever was in the URL is not echoed back (it could be a pasted key).
        raise NiyraError(THIRD_PARTY_PROVIDER)
    return normalised


def _require_byok_plan(user: User) -> None:
    if not billing_account_for(user=user).allows_byok:
        raise NiyraError(PLAN_NO_BYOK)


@sensitive_variables()
def _probe(*, user: User, scope: str, provider: str, key: str) -> ProbeResult:
    """One round trip to the provider with `key`. Must never run inside a DB transaction.

    Spends one of the user's probes for `scope` first (`byok.throttle`): only requests that
    reach the provider count, and past the budget it raises `throttled` before any call."""
    key_probe_budget_spend(user_id=user.pk, scope=scope)
    return async_to_sync(get_adapter(provider).probe)(key)


def _audit(*, actor: User | None, user: User, event: str, provider: str, outcome: str, details: dict[str, Any]) -> None:
    audit_event_record(
        actor=actor,
        subject=user,
        event=event,
        target=provider,
        outcome=outcome,
        details={"provider": provider, **details},
    )
    logger.info("%s user=%s provider=%s outcome=%s", event, user.pk, provider, outcome)


@sensitive_variables()
def provider_key_save(*, user: User, provider: str, key: str, actor: User | None = None) -> ProviderKey:
    """Add or rotate the user's key for `provider`, after validating it with the provider.

    A key that fails validation (invalid, or the provider unreachable) leaves the stored key as
    it was. A rate-limited or out-of-quota answer proves the key genuine: it is stored with that
    status, and the caller tells the user.
    """
    provider = supported_provider(provider)
    actor = actor or user
    _require_byok_plan(user)
    key = normalise_key(key)
    try:
        check_key_format(provider=provider, key=key)
    except NiyraError as exc:
        with transaction.atomic():
            _audit(
                actor=actor,
                user=user,
                event="provider_key.validation_failed",
                provider=provider,
                outcome=exc.code,
                details={"stage": "format"},
            )
        raise
    hint = key_hint(provider=provider, key=key)
    fingerprint = key_fingerprint(key)

    result = _probe(user=user, scope=SAVE, provider=provider, key=key)  # no transaction open across a call
    if (rejection := result.rejection) is not None:
        with transaction.atomic():
            _audit(
                actor=actor,
                user=user,
                event="provider_key.validation_failed",
                provider=provider,
                outcome=result.code,
                details={"stage": "provider", "hint": hint, "fingerprint": fingerprint},
            )
        raise rejection

    keyring = get_keyring()
    ciphertext = keyring.encrypt(key, purpose=provider_key_purpose(user_id=user.pk, provider=provider))
    del key
    values: dict[str, Any] = {
        "ciphertext": ciphertext,
        "encryption_key_id": keyring.primary_kid,
        "hint": hint,
        "fingerprint": fingerprint,
        "status": _STATUS_FOR_OUTCOME[result.code],
        "last_tested_at": timezone.now(),
        "last_error_code": "" if result.ok else result.code,
    }
    with transaction.atomic():
        existing = ProviderKey.objects.select_for_update().filter(user=user, provider=provider).first()
        if existing is None:
            try:
                with transaction.atomic():
                    provider_key = ProviderKey.objects.create(user=user, provider=provider, **values)
            except IntegrityError:  # a concurrent save created it a moment ago: this one rotates it
                existing = ProviderKey.objects.select_for_update().get(user=user, provider=provider)
        details: dict[str, Any] = {"hint": hint, "fingerprint": fingerprint, "status": values["status"]}
        if existing is not None:
            details["previous_hint"] = existing.hint
            for name, value in values.items():
                setattr(existing, name, value)
            existing.save()
            provider_key = existing
        _audit(
            actor=actor,
            user=user,
            event="provider_key.added" if existing is None else "provider_key.rotated",
            provider=provider,
            outcome=result.code,
            details=details,
        )
    return provider_key


@sensitive_variables()
def provider_key_test(*, user: User, provider: str, actor: User | None = None) -> ProviderKey:
    """The "Test key" button: one round trip with the stored key; records status and last tested.

    The provider being unreachable changes nothing (and raises PROVIDER_UNAVAILABLE); a key whose
    ciphertext no longer opens is marked "needs re-entry" (and raises KEY_NEEDS_REENTRY).
    """
    provider = supported_provider(provider)
    actor = actor or user
    _require_byok_plan(user)
    stored = provider_key_get(user=user, provider=provider)
    if stored is None:
        raise NiyraError(KEY_NOT_FOUND)
    try:
        key = provider_key_plaintext(stored)
    except NiyraError:
        provider_key_mark_needs_reentry(user=user, provider=provider, actor=actor)
        raise
    result = _probe(user=user, scope=TEST, provider=provider, key=key)
    del key

    with transaction.atomic():
        current = ProviderKey.objects.select_for_update().filter(pk=stored.pk).first()
        if current is None:  # disconnected while we were asking the provider
            raise NiyraError(KEY_NOT_FOUND)
        outcome = result.code
        status = _STATUS_FOR_OUTCOME.get(outcome)
        details: dict[str, Any] = {"hint": current.hint, "fingerprint": current.fingerprint}
        if current.fingerprint != stored.fingerprint:
            # Rotated while we were asking: the answer is about a key that is gone.
            details["superseded"] = True
        elif status is not None:
            current.status = status
            current.last_tested_at = timezone.now()
            current.last_error_code = "" if result.ok else outcome
            current.save(update_fields=["status", "last_tested_at", "last_error_code", "updated_at"])
            details["status"] = status
        _audit(actor=actor, user=user, event="provider_key.tested", provider=provider, outcome=outcome, details=details)
    if status is None and result.error is not None:  # the provider could not say (unavailable, …)
        raise result.error
    return current


def provider_key_disconnect(*, user: User, provider: str, actor: User | None = None) -> None:
    """Delete the user's key for `provider`; from the next message they are back on credits."""
    provider = supported_provider(provider)
    with transaction.atomic():
        provider_key = ProviderKey.objects.select_for_update().filter(user=user, provider=provider).first()
        if provider_key is None:
            raise NiyraError(KEY_NOT_FOUND)
        details = {"hint": provider_key.hint, "fingerprint": provider_key.fingerprint}
        provider_key.delete()
        _audit(
            actor=actor or user,
            user=user,
            event="provider_key.disconnected",
            provider=provider,
            outcome="ok",
            details=details,
        )


def _mark(
    *,
    user: User,
    provider: str,
    status: str,
    error_code: str,
    event: str,
    actor: User | None,
    fingerprint: str | None,
) -> ProviderKey | None:
    with transaction.atomic():
        provider_key = ProviderKey.objects.select_for_update().filter(user=user, provider=provider).first()
        if provider_key is None or (fingerprint is not None and provider_key.fingerprint != fingerprint):
            return provider_key  # gone or replaced since the call that failed: nothing to mark
        if provider_key.status != status:
            provider_key.status = status
            provider_key.last_error_code = error_code
            provider_key.save(update_fields=["status", "last_error_code", "updated_at"])
            _audit(
                actor=actor,
                user=user,
                event=event,
                provider=provider,
                outcome=error_code,
                details={"hint": provider_key.hint, "fingerprint": provider_key.fingerprint},
            )
        return provider_key


def provider_key_mark_invalid(
    *, user: User, provider: str, actor: User | None = None, fingerprint: str | None = None
) -> ProviderKey | None:
    """The provider rejected the key (401) on a routed call. `fingerprint`: the key that was used,
    so a key rotated in the meantime is not marked by mistake. No actor = the system."""
    return _mark(
        user=user,
        provider=provider,
        status=KeyStatus.INVALID,
        error_code=KEY_INVALID.code,
        event="provider_key.marked_invalid",
        actor=actor,
        fingerprint=fingerprint,
    )


def provider_key_mark_needs_reentry(
    *, user: User, provider: str, actor: User | None = None, fingerprint: str | None = None
) -> ProviderKey | None:
    """The stored ciphertext does not open with this keyring and purpose: the user must paste
    the key again. Nothing is deleted (a restored keyring entry would make it readable again)."""
    return _mark(
        user=user,
        provider=provider,
        status=KeyStatus.NEEDS_REENTRY,
        error_code=KEY_NEEDS_REENTRY.code,
        event="provider_key.needs_reentry",
        actor=actor,
        fingerprint=fingerprint,
    )
