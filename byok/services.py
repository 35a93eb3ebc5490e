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
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.db import IntegrityError, transaction
from django.db.models import Subquery
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from accounts.services import audit_event_record
from byok.health import (
    BYOK_PAGE,
    first_check_at,
    health_interval,
    key_notice,
    rate_limit_end,
    routed_observation_is_news,
)
from byok.keytext import check_key_format, key_fingerprint, key_hint, normalise_key
from byok.metrics import key_status_change_record, key_validation_record
from byok.models import CheckSource, KeyCheck, KeyStatus, Provider, ProviderKey, provider_key_purpose
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
from notifications.services import notification_send
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
    """A probe the user asked for (save, Test key): spends one of the user's probes for `scope`
    first (`byok.throttle`): only requests that reach the provider count, and past the budget it
    raises `throttled` before any call."""
    key_probe_budget_spend(user_id=user.pk, scope=scope)
    return _provider_probe(provider=provider, key=key)


@sensitive_variables()
def _provider_probe(*, provider: str, key: str) -> ProbeResult:
    """The one-token validation request, as the scheduled check makes it too (which spends no
    user budget: the user did not ask for it). Must never run inside a DB transaction."""
    result = async_to_sync(get_adapter(provider).probe)(key)
    key_validation_record(provider=provider, code=result.code)
    return result


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
    }
    status = _STATUS_FOR_OUTCOME[result.code]
    with transaction.atomic():
        existing = ProviderKey.objects.select_for_update().filter(user=user, provider=provider).first()
        if existing is None:
            try:
                with transaction.atomic():
                    provider_key = ProviderKey.objects.create(user=user, provider=provider, **values)
            except IntegrityError:  # a concurrent save created it a moment ago: this one rotates it
                existing = ProviderKey.objects.select_for_update().get(user=user, provider=provider)
        details: dict[str, Any] = {"hint": hint, "fingerprint": fingerprint, "status": status}
        if existing is not None:
            details["previous_hint"] = existing.hint
            for name, value in values.items():
                setattr(existing, name, value)
            existing.save()
            provider_key = existing
        _status_observe(provider_key, status=status, source=CheckSource.SAVE, result=result, actor=actor)
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
        provider_key_mark_needs_reentry(user=user, provider=provider, actor=actor, source=CheckSource.TEST)
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
            _status_observe(current, status=status, source=CheckSource.TEST, result=result, actor=actor)
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


# What live traffic can say about a key (`provider_key_observe`), as the key's status.
OBSERVATIONS: dict[str, KeyStatus] = {
    "ok": KeyStatus.VALID,
    "invalid": KeyStatus.INVALID,
    "rate_limited": KeyStatus.RATE_LIMITED,
    "quota_exhausted": KeyStatus.QUOTA_EXHAUSTED,
}
_ERROR_CODE_FOR_STATUS: dict[str, str] = {
    KeyStatus.VALID: "",
    KeyStatus.INVALID: KEY_INVALID.code,
    KeyStatus.RATE_LIMITED: KEY_RATE_LIMITED.code,
    KeyStatus.QUOTA_EXHAUSTED: KEY_QUOTA_EXHAUSTED.code,
    KeyStatus.NEEDS_REENTRY: KEY_NEEDS_REENTRY.code,
}
# The audit event of each status change.
_EVENT_FOR_STATUS = {
    KeyStatus.VALID: "provider_key.recovered",
    KeyStatus.INVALID: "provider_key.marked_invalid",
    KeyStatus.RATE_LIMITED: "provider_key.rate_limited",
    KeyStatus.QUOTA_EXHAUSTED: "provider_key.quota_exhausted",
    KeyStatus.NEEDS_REENTRY: "provider_key.needs_reentry",
}
# Changes Niyra noticed by itself are notified; on save and Test key the user is reading the answer.
_NOTIFYING_SOURCES = frozenset({CheckSource.SCHEDULED, CheckSource.ROUTED})
KEY_CHECK_HISTORY = 20
# A scheduled check claims its key this long: a replay or second delivery finds it not due; a
# check whose worker died is picked up again by a later tick.
_CHECK_CLAIM = timedelta(hours=1)
# When a probe could not tell (the provider unreachable) or met a rate limit (short-lived by
# nature), the next check comes sooner than the interval.
_RECHECK_SOON = timedelta(hours=1)


def _check_record(
    provider_key: ProviderKey, *, source: str, now: datetime, error_code: str, latency_ms: int | None
) -> None:
    KeyCheck.objects.create(
        provider_key=provider_key,
        checked_at=now,
        source=source,
        status=provider_key.status,
        error_code=error_code,
        fingerprint=provider_key.fingerprint,
        latency_ms=latency_ms,
    )
    newest = KeyCheck.objects.filter(provider_key=provider_key).order_by("-checked_at", "-id")[:KEY_CHECK_HISTORY]
    KeyCheck.objects.filter(provider_key=provider_key).exclude(pk__in=Subquery(newest.values("pk"))).delete()


def _status_observe(
    provider_key: ProviderKey,
    *,
    status: str,
    source: str,
    actor: User | None = None,
    result: ProbeResult | None = None,
    retry_after_seconds: float | None = None,
) -> bool:
    """The one transition rule for a key's status, whoever noticed it (a probe: save, Test key,
    the scheduled check; or a routed call). The caller holds the key's row lock in its
    transaction, so of two racing observations one changes the status and the other finds it
    changed. Returns whether the status changed.

    Every probe is recorded (a KeyCheck row, last checked, the next check a day on); a routed call
    only when it changes the status. A change is audited (save has its own "added"/"rotated" row)
    and, when Niyra noticed it itself, notified once: the notification's event names the change by
    the key's change counter.
    """
    now = timezone.now()
    probed = source != CheckSource.ROUTED
    if result is not None and result.error is not None and retry_after_seconds is None:
        retry_after_seconds = result.error.detail.get("retry_after_seconds")
    before = provider_key.status
    limited_until = provider_key.rate_limited_until
    if not probed and not routed_observation_is_news(observed=status, known=before, limited_until=limited_until):
        return False
    changed = status != before
    # `updated_at` moves with the status, not with each check ("Saved" on the card stays put).
    fields = ["status", "last_error_code", "rate_limited_until", "status_changes", "next_check_at"]
    fields += ["updated_at"] if changed else []
    provider_key.status = status
    provider_key.last_error_code = _ERROR_CODE_FOR_STATUS[status]
    provider_key.rate_limited_until = None
    if status == KeyStatus.RATE_LIMITED:
        until = rate_limit_end(now=now, retry_after_seconds=retry_after_seconds)
        provider_key.rate_limited_until = until if changed or limited_until is None else max(until, limited_until)
    if changed:
        provider_key.status_changes += 1  # under the row lock: the number names this change
        key_status_change_record(provider=provider_key.provider, status=status)
    if probed:
        provider_key.last_checked_at = now
        if source == CheckSource.SAVE:
            provider_key.next_check_at = first_check_at(
                user_id=provider_key.user_id, provider=provider_key.provider, now=now
            )
        elif status == KeyStatus.RATE_LIMITED:
            provider_key.next_check_at = now + min(_RECHECK_SOON, health_interval())
        else:
            provider_key.next_check_at = now + health_interval()
        fields.append("last_checked_at")
        if source in (CheckSource.SAVE, CheckSource.TEST):
            provider_key.last_tested_at = now
            fields.append("last_tested_at")
    elif changed and provider_key.rate_limited_until is not None:
        # Check again once the limit should be over, so an idle key isn't shown limited for a day.
        due = provider_key.rate_limited_until
        provider_key.next_check_at = min(provider_key.next_check_at or due, due)
    provider_key.save(update_fields=fields)

    if probed or changed:
        _check_record(
            provider_key,
            source=source,
            now=now,
            error_code=result.code if result is not None and not result.ok else provider_key.last_error_code,
            latency_ms=result.elapsed_ms if result is not None else None,
        )
    if changed and source != CheckSource.SAVE:
        _audit(
            actor=actor,
            user=provider_key.user,
            event=_EVENT_FOR_STATUS[KeyStatus(status)],
            provider=provider_key.provider,
            outcome=provider_key.last_error_code or "ok",
            details={
                "hint": provider_key.hint,
                "fingerprint": provider_key.fingerprint,
                "from": before,
                "to": status,
                "source": source,
                "change": provider_key.status_changes,
            },
        )
    if changed and source in _NOTIFYING_SOURCES:
        notice = key_notice(
            key_id=provider_key.pk,
            provider=provider_key.provider,
            hint=provider_key.hint,
            before=before,
            after=status,
            change=provider_key.status_changes,
            until=provider_key.rate_limited_until,
        )
        if notice is not None:
            notification_send(
                user_id=provider_key.user_id,
                kind=notice.kind,
                event_key=notice.event,
                title=notice.title,
                body=notice.body,
                link=BYOK_PAGE,
            )
    return changed


def _key_locked(*, user_id: int, provider: str) -> ProviderKey | None:
    return (
        ProviderKey.objects.select_for_update(of=("self",))
        .select_related("user")
        .filter(user_id=user_id, provider=provider)
        .first()
    )


def provider_key_observe(
    *,
    user_id: int,
    provider: str,
    fingerprint: str,
    observation: str,
    retry_after_seconds: float | None = None,
    source: str = "routed",
) -> None:
    """What a call made with the user's key said about it: "ok", "invalid" (401),
    "rate_limited" (429; `retry_after_seconds` from Retry-After) or "quota_exhausted".

    `fingerprint` is the key the call used: an observation about a key since replaced or
    disconnected is ignored. Live traffic that only confirms the known status costs one read.
    """
    status = OBSERVATIONS[observation]
    source = CheckSource(source)
    known = (
        ProviderKey.objects.filter(user_id=user_id, provider=provider)
        .values_list("status", "fingerprint", "rate_limited_until")
        .first()
    )
    if known is None or known[1] != fingerprint:
        return
    if source == CheckSource.ROUTED and not routed_observation_is_news(
        observed=status, known=known[0], limited_until=known[2]
    ):
        return  # the common case on live traffic: one read, no lock, no write
    with transaction.atomic():
        provider_key = _key_locked(user_id=user_id, provider=provider)
        if provider_key is None or provider_key.fingerprint != fingerprint:
            return  # replaced or disconnected meanwhile
        _status_observe(provider_key, status=status, source=source, retry_after_seconds=retry_after_seconds)


def provider_key_mark_invalid(
    *,
    user: User,
    provider: str,
    actor: User | None = None,
    fingerprint: str | None = None,
    source: str = CheckSource.ROUTED,
) -> ProviderKey | None:
    """The provider rejected the key (401). `fingerprint`: the key that was used, so a key
    rotated in the meantime is not marked by mistake. No actor = the system."""
    return _mark(
        user=user, provider=provider, status=KeyStatus.INVALID, actor=actor, fingerprint=fingerprint, source=source
    )


def provider_key_mark_needs_reentry(
    *,
    user: User,
    provider: str,
    actor: User | None = None,
    fingerprint: str | None = None,
    source: str = CheckSource.ROUTED,
) -> ProviderKey | None:
    """The stored ciphertext does not open with this keyring and purpose: the user must paste
    the key again. Nothing is deleted (a restored keyring entry would make it readable again)."""
    return _mark(
        user=user,
        provider=provider,
        status=KeyStatus.NEEDS_REENTRY,
        actor=actor,
        fingerprint=fingerprint,
        source=source,
    )


def _mark(
    *, user: User, provider: str, status: str, actor: User | None, fingerprint: str | None, source: str
) -> ProviderKey | None:
    with transaction.atomic():
        provider_key = _key_locked(user_id=user.pk, provider=provider)
        if provider_key is None or (fingerprint is not None and provider_key.fingerprint != fingerprint):
            return provider_key  # gone or replaced since the call that failed: nothing to mark
        _status_observe(provider_key, status=status, source=source, actor=actor)
        return provider_key


@sensitive_variables()
def provider_key_check(*, key_id: int) -> str:
    """The scheduled health check of one key (byok.tasks): the validation probe, recorded by the
    one rule. Spends none of the user's Test-key budget. Returns what happened, for the log.

    The key is claimed under its row lock (skip_locked: a racing check or observation has it)
    and the probe runs with no transaction open.
    """
    now = timezone.now()
    with transaction.atomic():
        provider_key = (
            ProviderKey.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("user")
            .filter(pk=key_id)
            .first()
        )
        if provider_key is None:
            return "busy_or_gone"
        if provider_key.next_check_at is None or provider_key.next_check_at > now:
            return "not_due"  # checked meanwhile (a replay, Test key, a second delivery)
        if not billing_account_for(user=provider_key.user).allows_byok:
            provider_key.next_check_at = now + health_interval()
            provider_key.save(update_fields=["next_check_at"])
            return "plan_no_byok"  # the key can't be used: don't spend the user's requests on it
        provider_key.next_check_at = now + _CHECK_CLAIM
        provider_key.save(update_fields=["next_check_at"])
    user, provider, fingerprint = provider_key.user, provider_key.provider, provider_key.fingerprint
    try:
        plaintext = provider_key_plaintext(provider_key)
    except NiyraError:
        provider_key_mark_needs_reentry(
            user=user, provider=provider, fingerprint=fingerprint, source=CheckSource.SCHEDULED
        )
        return KeyStatus.NEEDS_REENTRY
    result = _provider_probe(provider=provider, key=plaintext)
    del plaintext

    with transaction.atomic():
        current = _key_locked(user_id=user.pk, provider=provider)
        if current is None or current.fingerprint != fingerprint:
            return "superseded"
        status = _STATUS_FOR_OUTCOME.get(result.code)
        if status is None:  # the provider could not say (unavailable): no news about the key
            current.next_check_at = timezone.now() + _RECHECK_SOON
            current.save(update_fields=["next_check_at"])
            _check_record(
                current,
                source=CheckSource.SCHEDULED,
                now=timezone.now(),
                error_code=result.code,
                latency_ms=result.elapsed_ms,
            )
            return result.code
        _status_observe(current, status=status, source=CheckSource.SCHEDULED, result=result)
    return status
