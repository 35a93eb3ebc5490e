"""The key health monitor: one transition rule (routed calls, scheduled checks, Test key, save),
one notification per status change, the scheduled probe bounded and spread per provider."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection, connections
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEvent, User
from byok import tasks
from byok.health import routed_observation_is_news
from byok.key_sql import provider_key_used
from byok.keytext import key_fingerprint, key_hint
from byok.models import CheckSource, KeyCheck, KeyStatus, ProviderKey, provider_key_purpose
from byok.services import (
    KEY_CHECK_HISTORY,
    provider_key_check,
    provider_key_mark_invalid,
    provider_key_observe,
    provider_key_save,
    provider_key_test,
)
from core import errors
from core.crypto import get_keyring
from notifications.models import Kind, Notification
from sandbox import SandboxServer, anthropic_key, openai_key
from sandbox.requestlog import key_id as logged_key_id
from tests.notifications.outbox import emails_deliver

pytestmark = pytest.mark.django_db

KEYS = {"anthropic": anthropic_key, "openai": openai_key}


def stored_key(user: Any, provider: str, key: str, *, status: str = KeyStatus.VALID, due: bool = False) -> ProviderKey:
    """Test setup: a saved key the provider now answers for as `key`'s words say (the sandbox),
    whatever its stored status; `due`: its scheduled check is due."""
    keyring = get_keyring()
    return ProviderKey.objects.create(
        user=user,
        provider=provider,
        ciphertext=keyring.encrypt(key, purpose=provider_key_purpose(user_id=user.pk, provider=provider)),
        encryption_key_id=keyring.primary_kid,
        hint=key_hint(provider=provider, key=key),
        fingerprint=key_fingerprint(key),
        status=status,
        next_check_at=timezone.now() - timedelta(minutes=1) if due else None,
    )


def observe(key: ProviderKey, observation: str, **extra: Any) -> None:
    provider_key_observe(
        user_id=key.user_id, provider=key.provider, fingerprint=key.fingerprint, observation=observation, **extra
    )


def subjects() -> list[str]:
    return [message.subject for message in emails_deliver()]


# --- the transition rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observation", "status", "subject", "advice"),
    [
        ("invalid", KeyStatus.INVALID, "Niyra: Your OpenAI key was rejected", "Paste it without quotes"),
        ("rate_limited", KeyStatus.RATE_LIMITED, "Niyra: Your OpenAI key was rate limited", "upgrade your tier"),
        ("quota_exhausted", KeyStatus.QUOTA_EXHAUSTED, "Niyra: Your OpenAI key is out of quota", "Top up"),
    ],
)
def test_a_key_going_bad_on_a_routed_call_notifies_once(
    pro_user: Any, observation: str, status: str, subject: str, advice: str
) -> None:
    key = stored_key(pro_user, "openai", openai_key())
    now = timezone.now()

    observe(key, observation, retry_after_seconds=30)
    observe(key, observation, retry_after_seconds=30)  # the same news again (a retried call)

    key.refresh_from_db()
    assert (key.status, key.status_changes) == (status, 1)
    [check] = KeyCheck.objects.filter(provider_key=key)
    assert (check.source, check.status) == (CheckSource.ROUTED, status)
    assert AuditEvent.objects.filter(subject=pro_user, event__startswith="provider_key.").count() == 1
    [email] = emails_deliver()
    assert email.subject == subject and advice in email.body and key.hint in email.body
    assert email.to == [pro_user.email] and "/settings/byok/" in email.body
    if status == KeyStatus.RATE_LIMITED:
        assert key.rate_limited_until is not None
        assert timedelta(seconds=25) < key.rate_limited_until - timezone.now() <= timedelta(seconds=30)
        # checked again when the limit should end (a later 429 extends the limit, not the check)
        assert key.next_check_at is not None and now < key.next_check_at <= key.rate_limited_until


def test_recovery_notifies_once_and_a_replayed_check_does_nothing(pro_user: Any, sandbox: SandboxServer) -> None:
    key = stored_key(pro_user, "anthropic", anthropic_key(), status=KeyStatus.INVALID, due=True)

    assert provider_key_check(key_id=key.pk) == KeyStatus.VALID
    assert provider_key_check(key_id=key.pk) == "not_due"  # the replayed task
    tasks.key_health_check(key_id=key.pk)  # and through the task itself

    key.refresh_from_db()
    assert key.status == KeyStatus.VALID and key.last_checked_at is not None
    assert key.next_check_at is not None and key.next_check_at > timezone.now() + timedelta(hours=23)
    assert len(sandbox.log) == 1  # one probe
    assert subjects() == ["Niyra: Your Anthropic key works again"]
    assert emails_deliver() and len(mail.outbox) == 1  # delivering again sends nothing more
    [notification] = Notification.objects.filter(user=pro_user)
    assert notification.kind == Kind.KEY_RECOVERED and notification.link == "/settings/byok/"
    [check] = KeyCheck.objects.filter(provider_key=key)
    assert (check.source, check.status, check.error_code) == (CheckSource.SCHEDULED, KeyStatus.VALID, "")
    assert check.latency_ms is not None


def test_every_change_is_its_own_event(pro_user: Any) -> None:
    key = stored_key(pro_user, "openai", openai_key())
    observe(key, "invalid")
    ProviderKey.objects.filter(pk=key.pk).update(status=KeyStatus.VALID)  # e.g. the provider re-enabled it
    observe(key, "invalid")

    assert subjects() == ["Niyra: Your OpenAI key was rejected"] * 2
    assert sorted(Notification.objects.values_list("event_key", flat=True)) == [
        f"key:{key.pk}:problem:1",
        f"key:{key.pk}:problem:2",
    ]


def test_observations_about_a_replaced_or_removed_key_are_ignored(pro_user: Any) -> None:
    key = stored_key(pro_user, "openai", openai_key())
    provider_key_observe(
        user_id=pro_user.pk, provider="openai", fingerprint="0" * 16, observation="invalid"
    )  # the key that call used was rotated since
    provider_key_observe(user_id=pro_user.pk, provider="anthropic", fingerprint=key.fingerprint, observation="invalid")

    key.refresh_from_db()
    assert (key.status, key.status_changes) == (KeyStatus.VALID, 0)
    assert not KeyCheck.objects.exists() and not Notification.objects.exists()


def test_a_rate_limit_lasts_until_its_end_then_the_key_counts_as_valid_again(pro_user: Any) -> None:
    key = stored_key(pro_user, "anthropic", anthropic_key())
    observe(key, "rate_limited", retry_after_seconds=60)
    observe(key, "ok")  # a call that got through inside the window: the limit is not over
    observe(key, "rate_limited")  # more 429s: the same limit, not news
    key.refresh_from_db()
    assert key.status == KeyStatus.RATE_LIMITED

    ProviderKey.objects.filter(pk=key.pk).update(rate_limited_until=timezone.now() - timedelta(seconds=1))
    observe(key, "ok")

    key.refresh_from_db()
    assert (key.status, key.rate_limited_until, key.status_changes) == (KeyStatus.VALID, None, 2)
    assert sorted(subjects()) == ["Niyra: Your Anthropic key was rate limited", "Niyra: Your Anthropic key works again"]


def test_a_rate_limit_without_retry_after_gets_the_default(pro_user: Any, settings: Any) -> None:
    settings.BYOK_RATE_LIMITED_DEFAULT_SECONDS = 120
    key = stored_key(pro_user, "openai", openai_key())
    observe(key, "rate_limited")
    key.refresh_from_db()
    assert key.rate_limited_until is not None
    assert timedelta(seconds=115) < key.rate_limited_until - timezone.now() <= timedelta(seconds=120)


def test_mark_invalid_is_the_same_rule(pro_user: Any) -> None:
    key = stored_key(pro_user, "anthropic", anthropic_key())
    provider_key_mark_invalid(user=pro_user, provider="anthropic", fingerprint=key.fingerprint)
    provider_key_mark_invalid(user=pro_user, provider="anthropic", fingerprint=key.fingerprint)

    assert AuditEvent.objects.filter(subject=pro_user, event="provider_key.marked_invalid").count() == 1
    assert subjects() == ["Niyra: Your Anthropic key was rejected"]


def test_a_scheduled_check_that_cannot_open_the_key_asks_for_reentry(pro_user: Any, sandbox: SandboxServer) -> None:
    key = stored_key(pro_user, "openai", openai_key(), due=True)
    ProviderKey.objects.filter(pk=key.pk).update(encryption_key_id="gone")
    ProviderKey.objects.filter(pk=key.pk).update(ciphertext=b"\x00" * 40)

    assert provider_key_check(key_id=key.pk) == KeyStatus.NEEDS_REENTRY
    assert len(sandbox.log) == 0
    assert subjects() == ["Niyra: Your OpenAI key needs to be pasted again"]


def test_save_and_test_key_record_checks_without_emailing(pro_user: Any, sandbox: SandboxServer) -> None:
    """The user is reading the answer on the page: history, yes; an email, no."""
    saved = provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key("ratelimit"))
    assert saved.next_check_at is not None and saved.next_check_at <= timezone.now() + timedelta(days=1)
    tested = provider_key_test(user=pro_user, provider="anthropic")

    assert tested.status == KeyStatus.RATE_LIMITED and tested.rate_limited_until is not None
    sources = list(KeyCheck.objects.filter(provider_key=saved).values_list("source", "status", "error_code"))
    assert sources == [
        (CheckSource.TEST, KeyStatus.RATE_LIMITED, "rate_limited"),
        (CheckSource.SAVE, KeyStatus.RATE_LIMITED, "rate_limited"),
    ]
    assert subjects() == []


def test_the_history_stays_short(pro_user: Any) -> None:
    key = stored_key(pro_user, "openai", openai_key())
    for index in range(KEY_CHECK_HISTORY + 3):
        observe(key, "invalid" if index % 2 == 0 else "quota_exhausted")
    assert KeyCheck.objects.filter(provider_key=key).count() == KEY_CHECK_HISTORY
    newest = KeyCheck.objects.filter(provider_key=key).first()
    assert newest is not None and newest.status == KeyStatus.INVALID  # the last one is kept


@pytest.mark.django_db(transaction=True)
def test_racing_observations_notify_once(make_plan_user: Callable[..., Any]) -> None:
    user = make_plan_user("pro")
    key = stored_key(user, "openai", openai_key())
    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def observe_in_thread(observation: str) -> None:
        try:
            start.wait()
            observe(key, observation)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=observe_in_thread, args=("invalid",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    key.refresh_from_db()
    assert (key.status, key.status_changes) == (KeyStatus.INVALID, 1)
    assert Notification.objects.filter(user=user, kind=Kind.KEY_PROBLEM).count() == 1
    assert KeyCheck.objects.filter(provider_key=key).count() == 1


# --- the scheduled probe ----------------------------------------------------------------------


def test_the_tick_bounds_and_spreads_each_providers_checks(
    make_plan_user: Callable[..., Any],
    sandbox: SandboxServer,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.BYOK_HEALTH_MAX_PER_PROVIDER_PER_TICK = 3
    settings.BYOK_HEALTH_TICK_SECONDS = 300
    plaintexts = {"anthropic": [anthropic_key() for _ in range(5)], "openai": [openai_key() for _ in range(2)]}
    for provider, keys in plaintexts.items():
        for index, key in enumerate(keys):
            stored_key(make_plan_user("pro", email=f"{provider}{index}@example.com"), provider, key, due=True)
    stored_key(make_plan_user("pro", email="later@example.com"), "openai", openai_key())  # not due
    queued: list[tuple[int, float]] = []

    def enqueue(*, kwargs: dict[str, int], countdown: float, **_: Any) -> None:
        queued.append((kwargs["key_id"], countdown))

    monkeypatch.setattr(tasks.key_health_check, "apply_async", enqueue)

    def tick() -> list[tuple[int, float]]:
        queued.clear()
        with django_capture_on_commit_callbacks(execute=True):
            tasks.key_health_tick()
        for key_id, _countdown in sorted(queued, key=lambda item: item[1]):  # as the worker would run them
            tasks.key_health_check(key_id=key_id)
        return list(queued)

    first = tick()
    by_provider = {
        provider: sorted(
            countdown for key_id, countdown in first if ProviderKey.objects.get(pk=key_id).provider == provider
        )
        for provider in plaintexts
    }
    assert by_provider == {"anthropic": [0.0, 100.0, 200.0], "openai": [0.0, 150.0]}
    probes = {record["key_id"] for record in sandbox.log.records()}
    assert len(sandbox.log) == 5 and probes <= {logged_key_id(k) for keys in plaintexts.values() for k in keys}

    second = tick()  # the two anthropic keys left over
    assert sorted(countdown for _, countdown in second) == [0.0, 150.0]
    assert len(sandbox.log) == 7 and {record["key_id"] for record in sandbox.log.records()} == {
        logged_key_id(k) for keys in plaintexts.values() for k in keys
    }
    assert tick() == [] and len(sandbox.log) == 7  # every key checked: nothing due for a day
    assert subjects() == []  # all of them were valid and stayed so


def test_the_scheduled_check_spends_none_of_the_users_test_budget(
    pro_user: Any, sandbox: SandboxServer, settings: Any
) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "byok_test": "1/hour"},
    }
    key = stored_key(pro_user, "openai", openai_key(), due=True)
    assert provider_key_check(key_id=key.pk) == KeyStatus.VALID
    ProviderKey.objects.filter(pk=key.pk).update(next_check_at=timezone.now())
    assert provider_key_check(key_id=key.pk) == KeyStatus.VALID

    provider_key_test(user=pro_user, provider="openai")  # the user's one test this hour is still there
    with pytest.raises(errors.NiyraError) as caught:
        provider_key_test(user=pro_user, provider="openai")
    assert caught.value.code == errors.THROTTLED.code
    assert len(sandbox.log) == 3


def test_a_key_the_plan_cannot_use_is_not_probed(make_plan_user: Callable[..., Any], sandbox: SandboxServer) -> None:
    key = stored_key(make_plan_user("free"), "anthropic", anthropic_key(), due=True)
    assert provider_key_check(key_id=key.pk) == "plan_no_byok"
    assert len(sandbox.log) == 0
    key.refresh_from_db()
    assert key.next_check_at is not None and key.next_check_at > timezone.now() + timedelta(hours=23)


# --- last used ---------------------------------------------------------------------------------


def test_last_used_is_written_at_most_once_a_minute(pro_user: Any) -> None:
    key = stored_key(pro_user, "anthropic", anthropic_key())
    now = timezone.now()

    def run(at: Any) -> int:
        statement = provider_key_used(user_id=pro_user.pk, provider="anthropic", at=at)
        with connection.cursor() as cursor:
            cursor.execute(statement.sql, statement.params)
            return cursor.rowcount

    assert run(now) == 1
    assert run(now + timedelta(seconds=30)) == 0  # cheap: no write within the minute
    assert run(now + timedelta(seconds=61)) == 1
    key.refresh_from_db()
    assert key.last_used_at == now + timedelta(seconds=61)
    assert key.updated_at < now  # using a key is not changing it


# --- never the key -------------------------------------------------------------------------------


def test_the_canary_key_is_in_no_notification_email_check_or_admin_page(pro_user: Any, sandbox: SandboxServer) -> None:
    canary = secrets.token_hex(12)
    key = stored_key(pro_user, "openai", openai_key(canary), status=KeyStatus.INVALID, due=True)
    provider_key_check(key_id=key.pk)  # recovered
    observe(key, "rate_limited")
    ProviderKey.objects.filter(pk=key.pk).update(encryption_key_id="gone", next_check_at=timezone.now())
    provider_key_check(key_id=key.pk)  # needs re-entry
    emails = emails_deliver()
    assert len(emails) == 3

    staff = User.objects.create_superuser(email="support@niyra.ai", password="x")
    admin = Client()
    admin.force_login(staff)
    pages = [admin.get(f"/admin/byok/providerkey/{key.pk}/change/"), admin.get("/admin/byok/providerkey/")]
    owner = Client()
    owner.force_login(pro_user)
    pages += [owner.get("/settings/byok/"), owner.get("/api/keys"), owner.get("/notifications/")]
    assert all(page.status_code == 200 for page in pages)

    haystack = [
        *(f"{n.title} {n.body} {n.event_key} {n.link}" for n in Notification.objects.all()),
        *(f"{e.subject} {e.body} {e.to}" for e in emails),
        *(repr(row) for row in KeyCheck.objects.values_list()),
        *(page.content.decode() for page in pages),
    ]
    assert sum("KeyCheck" in text or "Scheduled check" in text for text in haystack) >= 1
    assert not [text for text in haystack if canary in text]


OPEN, PAST = timedelta(minutes=5), -timedelta(minutes=5)  # a rate limit's end, from now


@pytest.mark.parametrize(
    ("observed", "known", "until", "news"),
    [
        (KeyStatus.VALID, KeyStatus.VALID, None, False),  # a healthy call: nothing to record
        (KeyStatus.VALID, KeyStatus.INVALID, None, True),  # works again
        (KeyStatus.VALID, KeyStatus.UNVERIFIED, None, True),
        (KeyStatus.INVALID, KeyStatus.VALID, None, True),
        (KeyStatus.INVALID, KeyStatus.INVALID, None, False),  # a repeat of a known failure
        (KeyStatus.QUOTA_EXHAUSTED, KeyStatus.QUOTA_EXHAUSTED, None, False),
        (KeyStatus.VALID, KeyStatus.RATE_LIMITED, OPEN, False),  # 200s and 429s interleave under a limit
        (KeyStatus.RATE_LIMITED, KeyStatus.RATE_LIMITED, OPEN, False),
        (KeyStatus.INVALID, KeyStatus.RATE_LIMITED, OPEN, True),
        (KeyStatus.VALID, KeyStatus.RATE_LIMITED, PAST, True),  # the limit is over: valid again
        (KeyStatus.RATE_LIMITED, KeyStatus.RATE_LIMITED, PAST, True),  # a new window
    ],
)
def test_what_a_routed_call_saw_is_news_only_when_it_changes_the_record(
    observed: str, known: str, until: timedelta | None, news: bool
) -> None:
    limited_until = timezone.now() + until if until is not None else None

    assert routed_observation_is_news(observed=observed, known=known, limited_until=limited_until) is news
