"""Saving, testing, rotating and disconnecting provider keys, against the sandbox providers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction

from accounts.models import AuditEvent
from byok import services
from byok.models import KeyStatus, ProviderKey, provider_key_purpose
from byok.selectors import provider_key_effective_status, provider_key_plaintext
from byok.services import (
    provider_key_disconnect,
    provider_key_mark_invalid,
    provider_key_save,
    provider_key_test,
)
from core import errors
from core.crypto import Keyring, generate_key_spec, get_keyring
from providers import PROBE_MODELS
from routing.catalog import MODELS, Kind
from routing.credentials import credential_decide
from routing.selectors import routing_snapshot
from sandbox import SandboxServer, anthropic_key, openai_key

pytestmark = pytest.mark.django_db

KEYS = {"anthropic": anthropic_key, "openai": openai_key}


def routes_through_own_key(user: Any, provider: str) -> ProviderKey | None:
    """The saved key a chat call to ``provider`` would run on — the dispatcher's own rule
    (`routing.credentials.credential_decide`) — or None when the call would not use it."""
    model = next(m for m in MODELS if m.provider == provider and m.kind == Kind.CHAT and not m.byok_only)
    try:
        return credential_decide(model=model, snapshot=routing_snapshot(user_id=user.pk)).provider_key
    except errors.NiyraError:
        return None


def audit_events(user: Any, event: str | None = None) -> list[AuditEvent]:
    rows = AuditEvent.objects.filter(subject=user).exclude(event__startswith="user.").order_by("id")
    return list(rows.filter(event=event) if event else rows)


def store_directly(user: Any, provider: str, key: str, *, keyring: Keyring | None = None) -> ProviderKey:
    """Test setup only: a stored key the provider would now answer differently for."""
    keyring = keyring or get_keyring()
    return ProviderKey.objects.create(
        user=user,
        provider=provider,
        ciphertext=keyring.encrypt(key, purpose=provider_key_purpose(user_id=user.pk, provider=provider)),
        encryption_key_id=keyring.primary_kid,
        hint=f"{key[:7]}…{key[-4:]}",
        fingerprint="f" * 16,
        status=KeyStatus.VALID,
    )


# --- save ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_save_validates_with_one_tiny_request_then_stores_encrypted(
    provider: str, pro_user: Any, sandbox: SandboxServer
) -> None:
    key = KEYS[provider]()

    saved = provider_key_save(user=pro_user, provider=provider, key=f'  "{key}"\n')

    assert sandbox.log.count(key=key) == 1
    assert sandbox.log.records()[0]["model"] == PROBE_MODELS[provider]
    saved.refresh_from_db()
    assert saved.status == KeyStatus.VALID and saved.last_error_code == ""
    assert saved.last_tested_at is not None
    assert saved.hint == f"{key[: 7 if provider == 'anthropic' else 8]}…{key[-4:]}"
    assert key.encode() not in bytes(saved.ciphertext)
    assert saved.encryption_key_id == get_keyring().primary_kid
    assert provider_key_plaintext(saved) == key
    [event] = audit_events(pro_user)
    assert (event.event, event.actor, event.target, event.outcome) == ("provider_key.added", pro_user, provider, "ok")
    assert event.details["hint"] == saved.hint and key not in str(event.details)


def test_alpha_plan_may_bring_a_key(make_plan_user: Callable[..., Any]) -> None:
    user = make_plan_user("alpha")
    assert provider_key_save(user=user, provider="anthropic", key=anthropic_key()).status == KeyStatus.VALID


def test_free_plan_is_refused_before_any_provider_call(
    make_plan_user: Callable[..., Any], sandbox: SandboxServer
) -> None:
    user = make_plan_user("free")
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_save(user=user, provider="anthropic", key=anthropic_key())
    assert caught.value.spec is errors.PLAN_NO_BYOK
    assert "BYOK is available on Pro and Alpha" in caught.value.message
    assert len(sandbox.log) == 0 and not ProviderKey.objects.exists()


@pytest.mark.parametrize("provider", ["together", "groq", "mistral", "azure", ""])
def test_third_party_providers_are_refused_with_the_page_words(provider: str, pro_user: Any) -> None:
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_save(user=pro_user, provider=provider, key=anthropic_key())
    assert caught.value.spec is errors.THIRD_PARTY_PROVIDER
    assert "No third-party providers via BYOK yet" in caught.value.message


def test_provider_names_are_case_insensitive(pro_user: Any) -> None:
    assert provider_key_save(user=pro_user, provider="OpenAI", key=openai_key()).provider == "openai"


def test_a_malformed_key_never_reaches_the_provider(pro_user: Any, sandbox: SandboxServer) -> None:
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_save(user=pro_user, provider="openai", key="sk-ant-api03-" + "x" * 40)
    assert caught.value.spec is errors.KEY_WRONG_PROVIDER
    assert len(sandbox.log) == 0 and not ProviderKey.objects.exists()
    [event] = audit_events(pro_user)
    assert (event.event, event.outcome) == ("provider_key.validation_failed", "key_wrong_provider")


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_key_the_provider_rejects_is_not_stored(provider: str, pro_user: Any, sandbox: SandboxServer) -> None:
    key = KEYS[provider]("invalid")
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_save(user=pro_user, provider=provider, key=key)
    assert caught.value.spec is errors.KEY_INVALID
    assert sandbox.log.count(key=key) == 1
    assert not ProviderKey.objects.exists()
    [event] = audit_events(pro_user)
    assert (event.event, event.outcome) == ("provider_key.validation_failed", "key_invalid")


@pytest.mark.parametrize(
    ("word", "status", "code"),
    [("ratelimit", KeyStatus.RATE_LIMITED, "rate_limited"), ("noquota", KeyStatus.QUOTA_EXHAUSTED, "quota_exhausted")],
)
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_rate_limited_or_out_of_quota_keys_are_genuine_and_stored_with_that_status(
    provider: str, word: str, status: str, code: str, pro_user: Any
) -> None:
    key = KEYS[provider](word)
    saved = provider_key_save(user=pro_user, provider=provider, key=key)
    saved.refresh_from_db()
    assert (saved.status, saved.last_error_code) == (status, code)
    assert provider_key_plaintext(saved) == key
    assert audit_events(pro_user)[0].outcome == code


@pytest.mark.parametrize("word", ["overloaded", "error", "malformed", "hang", "slow3000"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_provider_unreachable_stores_nothing_and_says_try_again(
    provider: str, word: str, pro_user: Any, settings: Any
) -> None:
    settings.PROVIDER_VALIDATION_TIMEOUT_SECONDS = 0.5
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_save(user=pro_user, provider=provider, key=KEYS[provider](word))
    assert caught.value.spec is errors.PROVIDER_UNAVAILABLE
    # Was the routed calls' "Couldn't reach the provider, try again. Nothing was charged.":
    # saving never charges, so it says the saved key is unchanged.
    label = {"anthropic": "Anthropic", "openai": "OpenAI"}[provider]
    assert caught.value.message == (
        f"Couldn't reach {label} to check the key. Your saved key, if any, is unchanged. Try again."
    )
    assert not ProviderKey.objects.exists()
    assert audit_events(pro_user)[0].outcome == "provider_unavailable"


def test_rotation_replaces_the_key(pro_user: Any) -> None:
    first, second = anthropic_key(), anthropic_key()
    original = provider_key_save(user=pro_user, provider="anthropic", key=first)

    rotated = provider_key_save(user=pro_user, provider="anthropic", key=second)

    assert rotated.pk == original.pk and ProviderKey.objects.count() == 1
    assert provider_key_plaintext(ProviderKey.objects.get()) == second
    added, event = audit_events(pro_user)
    assert added.event == "provider_key.added"
    assert event.event == "provider_key.rotated"
    assert event.details["previous_hint"] == original.hint and event.details["hint"] == rotated.hint


@pytest.mark.parametrize("word", ["invalid", "overloaded", "hang"])
def test_a_new_key_that_fails_validation_leaves_the_old_key_in_place(word: str, pro_user: Any, settings: Any) -> None:
    settings.PROVIDER_VALIDATION_TIMEOUT_SECONDS = 0.5
    old = anthropic_key()
    provider_key_save(user=pro_user, provider="anthropic", key=old)
    before = ProviderKey.objects.values().get()

    with pytest.raises(errors.NiyraError):
        provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key(word))

    after = ProviderKey.objects.values().get()
    assert {k: bytes(v) if isinstance(v, memoryview) else v for k, v in after.items()} == {
        k: bytes(v) if isinstance(v, memoryview) else v for k, v in before.items()
    }
    assert provider_key_plaintext(ProviderKey.objects.get()) == old


@pytest.mark.django_db(transaction=True)
def test_no_transaction_is_open_during_the_provider_call_outside_a_test_transaction(
    make_plan_user: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_plan_user("pro")
    seen: list[bool] = []
    real_probe = services._probe

    def spy(**kwargs: Any) -> Any:
        seen.append(transaction.get_connection().in_atomic_block)
        return real_probe(**kwargs)

    monkeypatch.setattr(services, "_probe", spy)
    provider_key_save(user=user, provider="openai", key=openai_key())
    provider_key_test(user=user, provider="openai")
    assert seen == [False, False]


# --- test ---------------------------------------------------------------------------------


def test_test_key_makes_one_round_trip_and_records_the_result(pro_user: Any, sandbox: SandboxServer) -> None:
    key = openai_key()
    saved = provider_key_save(user=pro_user, provider="openai", key=key)
    ProviderKey.objects.filter(pk=saved.pk).update(last_tested_at=None)

    tested = provider_key_test(user=pro_user, provider="openai")

    assert sandbox.log.count(key=key) == 2
    assert tested.status == KeyStatus.VALID and tested.last_tested_at is not None
    assert audit_events(pro_user, "provider_key.tested")[0].outcome == "ok"


@pytest.mark.parametrize(
    ("word", "status", "code"),
    [
        ("invalid", KeyStatus.INVALID, "key_invalid"),
        ("ratelimit", KeyStatus.RATE_LIMITED, "rate_limited"),
        ("noquota", KeyStatus.QUOTA_EXHAUSTED, "quota_exhausted"),
    ],
)
def test_test_key_records_what_the_provider_now_says(word: str, status: str, code: str, pro_user: Any) -> None:
    store_directly(pro_user, "anthropic", anthropic_key(word))
    tested = provider_key_test(user=pro_user, provider="anthropic")
    tested.refresh_from_db()
    assert (tested.status, tested.last_error_code) == (status, code)
    assert tested.last_tested_at is not None
    [event] = audit_events(pro_user, "provider_key.tested")
    assert (event.outcome, event.details["status"]) == (code, status)


def test_a_key_that_works_again_clears_its_last_error(pro_user: Any) -> None:
    stored = store_directly(pro_user, "anthropic", anthropic_key())
    ProviderKey.objects.filter(pk=stored.pk).update(status=KeyStatus.RATE_LIMITED, last_error_code="rate_limited")
    tested = provider_key_test(user=pro_user, provider="anthropic")
    assert (tested.status, tested.last_error_code) == (KeyStatus.VALID, "")


def test_test_key_when_the_provider_is_down_changes_nothing(pro_user: Any) -> None:
    stored = store_directly(pro_user, "openai", openai_key("overloaded"))
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_test(user=pro_user, provider="openai")
    assert caught.value.spec is errors.PROVIDER_UNAVAILABLE
    current = ProviderKey.objects.get()
    assert (current.status, current.last_tested_at, current.last_error_code) == (stored.status, None, "")
    assert audit_events(pro_user, "provider_key.tested")[0].outcome == "provider_unavailable"


def test_test_key_without_a_key(pro_user: Any) -> None:
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_test(user=pro_user, provider="anthropic")
    assert caught.value.spec is errors.KEY_NOT_FOUND


def test_test_key_after_a_downgrade_is_refused(pro_user: Any, sandbox: SandboxServer) -> None:
    provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key())
    pro_user.billing_account.plan = "free"
    pro_user.billing_account.save()
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_test(user=pro_user, provider="anthropic")
    assert caught.value.spec is errors.PLAN_NO_BYOK
    assert len(sandbox.log) == 1  # only the save's probe


def test_a_rotation_during_a_test_is_not_overwritten_by_the_stale_answer(
    pro_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_directly(pro_user, "anthropic", anthropic_key("invalid"))
    real_probe = services._probe

    def rotate_meanwhile(**kwargs: Any) -> Any:
        result = real_probe(**kwargs)
        ProviderKey.objects.update(fingerprint="0" * 16, status=KeyStatus.VALID)
        return result

    monkeypatch.setattr(services, "_probe", rotate_meanwhile)
    tested = provider_key_test(user=pro_user, provider="anthropic")
    assert tested.status == KeyStatus.VALID
    assert audit_events(pro_user, "provider_key.tested")[0].details["superseded"] is True


# --- keys that no longer open -------------------------------------------------------------


def test_a_key_under_an_unknown_key_id_needs_reentry_and_never_crashes(pro_user: Any, sandbox: SandboxServer) -> None:
    store_directly(pro_user, "anthropic", anthropic_key(), keyring=Keyring.parse(generate_key_spec("retired")))
    stored = ProviderKey.objects.get()
    assert provider_key_effective_status(stored) == KeyStatus.NEEDS_REENTRY
    assert routes_through_own_key(pro_user, "anthropic") is None

    with pytest.raises(errors.NiyraError) as caught:
        provider_key_test(user=pro_user, provider="anthropic")

    assert caught.value.spec is errors.KEY_NEEDS_REENTRY
    assert len(sandbox.log) == 0
    stored.refresh_from_db()
    assert (stored.status, stored.last_error_code) == (KeyStatus.NEEDS_REENTRY, "key_needs_reentry")
    assert audit_events(pro_user, "provider_key.needs_reentry")


def test_a_tampered_ciphertext_needs_reentry(pro_user: Any, sandbox: SandboxServer) -> None:
    stored = store_directly(pro_user, "openai", openai_key())
    sealed = bytearray(bytes(stored.ciphertext))
    sealed[-1] ^= 0x80
    ProviderKey.objects.filter(pk=stored.pk).update(ciphertext=bytes(sealed))
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_test(user=pro_user, provider="openai")
    assert caught.value.spec is errors.KEY_NEEDS_REENTRY and len(sandbox.log) == 0


def test_a_ciphertext_copied_to_another_users_row_does_not_open(
    pro_user: Any, make_plan_user: Callable[..., Any], sandbox: SandboxServer
) -> None:
    mallory = make_plan_user("pro")
    provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key())
    victims = ProviderKey.objects.get(user=pro_user)
    store_directly(mallory, "anthropic", anthropic_key())
    ProviderKey.objects.filter(user=mallory).update(ciphertext=bytes(victims.ciphertext))
    sandbox.log.clear()

    with pytest.raises(errors.NiyraError) as caught:
        provider_key_test(user=mallory, provider="anthropic")

    assert caught.value.spec is errors.KEY_NEEDS_REENTRY
    assert len(sandbox.log) == 0


def test_reentering_a_key_fixes_it(pro_user: Any) -> None:
    store_directly(pro_user, "anthropic", anthropic_key(), keyring=Keyring.parse(generate_key_spec("retired")))
    provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key())
    assert provider_key_effective_status(ProviderKey.objects.get()) == KeyStatus.VALID


def test_an_old_key_id_still_opens_after_the_primary_changes(pro_user: Any, settings: Any) -> None:
    key = anthropic_key()
    provider_key_save(user=pro_user, provider="anthropic", key=key)
    settings.NIYRA_ENCRYPTION_KEYS = f"{generate_key_spec('newer')},{settings.NIYRA_ENCRYPTION_KEYS}"
    stored = ProviderKey.objects.get()
    assert provider_key_effective_status(stored) == KeyStatus.VALID
    assert provider_key_plaintext(stored) == key
    assert provider_key_test(user=pro_user, provider="anthropic").status == KeyStatus.VALID


# --- disconnect and routing's hooks -------------------------------------------------------


def test_disconnect_deletes_the_ciphertext(pro_user: Any) -> None:
    saved = provider_key_save(user=pro_user, provider="openai", key=openai_key())
    provider_key_disconnect(user=pro_user, provider="openai")
    assert not ProviderKey.objects.exists()
    assert routes_through_own_key(pro_user, "openai") is None
    event = audit_events(pro_user, "provider_key.disconnected")[0]
    assert (event.actor, event.details["hint"]) == (pro_user, saved.hint)
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_disconnect(user=pro_user, provider="openai")
    assert caught.value.spec is errors.KEY_NOT_FOUND


def test_disconnect_works_after_a_downgrade(pro_user: Any) -> None:
    provider_key_save(user=pro_user, provider="openai", key=openai_key())
    pro_user.billing_account.plan = "free"
    pro_user.billing_account.save()
    provider_key_disconnect(user=pro_user, provider="openai")
    assert not ProviderKey.objects.exists()


def test_mark_invalid_is_audited_and_ignores_a_key_rotated_meanwhile(pro_user: Any) -> None:
    saved = provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key())

    provider_key_mark_invalid(user=pro_user, provider="anthropic", fingerprint="0" * 16)
    assert ProviderKey.objects.get().status == KeyStatus.VALID

    provider_key_mark_invalid(user=pro_user, provider="anthropic", fingerprint=saved.fingerprint)
    marked = ProviderKey.objects.get()
    assert (marked.status, marked.last_error_code) == (KeyStatus.INVALID, "key_invalid")
    assert routes_through_own_key(pro_user, "anthropic") is None
    [event] = audit_events(pro_user, "provider_key.marked_invalid")
    assert event.actor is None


def test_usable_keys(pro_user: Any) -> None:
    assert routes_through_own_key(pro_user, "anthropic") is None
    provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key("ratelimit"))
    assert routes_through_own_key(pro_user, "anthropic") is not None


@pytest.mark.django_db(transaction=True)
def test_two_saves_racing_leave_one_key_and_two_audit_rows(
    make_plan_user: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from django.db import connection

    user = make_plan_user("pro")
    real_probe = services._probe
    barrier = threading.Barrier(2, timeout=10)

    def probe_then_race(**kwargs: Any) -> Any:
        result = real_probe(**kwargs)
        barrier.wait()  # both validated: now both write at once
        return result

    monkeypatch.setattr(services, "_probe", probe_then_race)
    keys = [anthropic_key(), anthropic_key()]
    failures: list[BaseException] = []

    def save(key: str) -> None:
        try:
            provider_key_save(user=user, provider="anthropic", key=key)
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=save, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert failures == []
    assert ProviderKey.objects.count() == 1
    assert provider_key_plaintext(ProviderKey.objects.get()) in keys
    assert sorted(e.event for e in audit_events(user)) == ["provider_key.added", "provider_key.rotated"]
