"""`manage.py reencrypt_secrets` (core): batched, resumable, counts per key id, safe next to live traffic."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from accounts.models import AuditEvent
from byok.models import ProviderKey, provider_key_purpose
from byok.selectors import provider_key_plaintext
from core.crypto import Keyring, generate_key_spec
from core.encrypted_fields import encrypted_fields

pytestmark = pytest.mark.django_db


def seal(user: Any, provider: str, key: str, keyring: Keyring) -> ProviderKey:
    return ProviderKey.objects.create(
        user=user,
        provider=provider,
        ciphertext=keyring.encrypt(key, purpose=provider_key_purpose(user_id=user.pk, provider=provider)),
        encryption_key_id=keyring.primary_kid,
        hint=f"sk-ant-…{key[-4:]}",
        fingerprint="0" * 16,
    )


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("reencrypt_secrets", *args, stdout=out, stderr=out)
    return out.getvalue()


@pytest.fixture
def old_rows(make_user: Callable[..., Any], settings: Any) -> dict[int, str]:
    """Five keys sealed with 'old'; then 'new' becomes primary and 'old' stays to decrypt."""
    old = generate_key_spec("old")
    settings.NIYRA_ENCRYPTION_KEYS = old
    keyring = Keyring.parse(old)
    plaintexts = {}
    for i in range(5):
        user = make_user()
        key = f"sk-ant-api03-rotation-test-{i:04d}-abcdefghijkl"
        plaintexts[seal(user, "anthropic", key, keyring).pk] = key
    settings.NIYRA_ENCRYPTION_KEYS = f"{generate_key_spec('new')},{old}"
    return plaintexts


def kids() -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in ProviderKey.objects.all():
        kid = Keyring.key_id_of(bytes(row.ciphertext))
        assert kid == row.encryption_key_id
        counts[kid or "?"] = counts.get(kid or "?", 0) + 1
    return counts


def test_provider_keys_are_registered() -> None:
    assert "byok.ProviderKey.ciphertext" in [entry.label for entry in encrypted_fields()]


def test_every_app_registers_its_own_encrypted_columns() -> None:
    """Each app registers from its AppConfig.ready(); core knows none of them by name."""
    assert {entry.label for entry in encrypted_fields()} == {
        "byok.ProviderKey.ciphertext",
        "connections.OAuthConnection.access_token_ciphertext",
        "connections.OAuthConnection.refresh_token_ciphertext",
        "connections.OAuthAuthorizationRequest.code_verifier_ciphertext",
    }


def test_reencrypts_everything_under_the_primary_in_batches(old_rows: dict[int, str]) -> None:
    assert kids() == {"old": 5}

    output = run("--batch-size", "2")

    assert "byok.ProviderKey.ciphertext before: old=5" in output
    assert "byok.ProviderKey: re-encrypted 5 row(s); 0 skipped (locked); 0 unreadable" in output
    assert "byok.ProviderKey.ciphertext after: new=5" in output
    assert kids() == {"new": 5}
    for row in ProviderKey.objects.all():
        assert provider_key_plaintext(row) == old_rows[row.pk]
    event = AuditEvent.objects.get(event="secrets.reencrypted")
    assert (event.target, event.outcome) == ("new", "ok")
    assert event.details["models"]["byok.ProviderKey"]["reencrypted"] == 5


def test_dry_run_changes_nothing(old_rows: dict[int, str]) -> None:
    output = run("--dry-run")
    assert "before: old=5" in output and "after" not in output
    assert kids() == {"old": 5}


def test_a_second_run_has_nothing_to_do(old_rows: dict[int, str]) -> None:
    run()
    output = run()
    assert "re-encrypted 0 row(s)" in output and "before: new=5" in output


def test_an_interrupted_run_resumes_where_it_stopped(old_rows: dict[int, str], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = Keyring.reencrypt

    def crash_on_the_fourth(self: Keyring, envelope: bytes, *, purpose: str) -> bytes:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, envelope, purpose=purpose)

    monkeypatch.setattr(Keyring, "reencrypt", crash_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run("--batch-size", "2")
    assert kids() == {"new": 2, "old": 3}  # the first batch committed; the second rolled back
    monkeypatch.setattr(Keyring, "reencrypt", real)

    output = run("--batch-size", "2")

    assert "before: new=2, old=3" in output and "re-encrypted 3 row(s)" in output
    assert kids() == {"new": 5}
    for row in ProviderKey.objects.all():
        assert provider_key_plaintext(row) == old_rows[row.pk]


def test_rows_that_do_not_open_are_reported_and_left_alone(
    old_rows: dict[int, str], make_user: Callable[..., Any]
) -> None:
    lost = seal(make_user(), "openai", "sk-proj-lost-key-000000000000", Keyring.parse(generate_key_spec("gone")))
    before = bytes(lost.ciphertext)

    output = run()

    assert "gone=1 (not in keyring)" in output
    assert "1 unreadable" in output and "needs re-entry" in output
    lost.refresh_from_db()
    assert bytes(lost.ciphertext) == before and lost.encryption_key_id == "gone"
    assert kids() == {"new": 5, "gone": 1}


def test_bad_arguments() -> None:
    with pytest.raises(CommandError):
        run("--batch-size", "0")


@pytest.mark.django_db(transaction=True)
def test_rows_locked_by_a_request_are_skipped_then_done_on_the_next_run(old_rows: dict[int, str]) -> None:
    """SKIP LOCKED: the command never waits on (or overwrites) a row a request is writing."""
    busy_pk = min(old_rows)
    locked, release, done = threading.Event(), threading.Event(), threading.Event()

    def request_holding_a_row_lock() -> None:
        try:
            with transaction.atomic():
                list(ProviderKey.objects.select_for_update().filter(pk=busy_pk))
                locked.set()
                release.wait(10)
        finally:
            connection.close()
            done.set()

    thread = threading.Thread(target=request_holding_a_row_lock)
    thread.start()
    assert locked.wait(10)
    try:
        with pytest.raises(CommandError, match="locked by requests"):
            run("--max-passes", "1")
        assert kids() == {"new": 4, "old": 1}
        assert ProviderKey.objects.get(pk=busy_pk).encryption_key_id == "old"
    finally:
        release.set()
        thread.join(10)

    output = run()
    assert "re-encrypted 1 row(s)" in output
    assert kids() == {"new": 5}
