"""Live traffic updates key health: a call through the user's key that the provider refuses (401,
429, quota) or accepts when the key was known bad is recorded by byok's service — once per
change, after the client has its answer — and a call that only confirms what is known records
nothing and hops nowhere. Every call on the key stamps its last use."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import anthropic
import openai
import pytest
from django.utils import timezone

from byok.models import CheckSource, KeyCheck, KeyStatus, ProviderKey
from notifications.models import Kind, Notification
from routing.gateway import core
from sandbox import RETRY_AFTER_SECONDS, anthropic_key, openai_key
from tests.routing.gateway.conftest import Niyra, key_recorded

pytestmark = pytest.mark.django_db(transaction=True)

CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4.1"
HELLO: Any = [{"role": "user", "content": "Hello there, how are you?"}]
SETTLE = 0.05  # the cache's invalidation, a few ms after the change commits, has arrived


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every observation the gateway hands to byok's service (which still runs)."""
    seen: list[str] = []
    real = core.provider_key_observe

    def spy(**kwargs: Any) -> None:
        seen.append(kwargs["observation"])
        real(**kwargs)

    monkeypatch.setattr(core, "provider_key_observe", spy)
    return seen


def _key(user: Any, provider: str) -> ProviderKey:
    return ProviderKey.objects.get(user=user, provider=provider)


def _routed_checks(key: ProviderKey) -> list[str]:
    return list(KeyCheck.objects.filter(provider_key=key, source=CheckSource.ROUTED).values_list("status", flat=True))


def test_a_401_marks_the_key_invalid_once_and_notifies(
    niyra: Niyra, make_account: Any, store_key: Any, observed: list[str]
) -> None:
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key("invalid"))

    with pytest.raises(anthropic.AuthenticationError):
        niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.BadRequestError) as known:  # refused by Niyra now: the provider isn't asked
        niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)

    key = key_recorded(user, "anthropic", KeyStatus.INVALID)
    assert isinstance(known.value.body, dict) and known.value.body["code"] == "key_rejected"
    assert key.status == KeyStatus.INVALID
    assert observed == ["invalid"]
    assert _routed_checks(key) == [KeyStatus.INVALID]
    assert Notification.objects.filter(user=user, kind=Kind.KEY_PROBLEM).count() == 1
    assert len(niyra.provider_requests("/anthropic/v1/messages")) == 1


def test_a_429_marks_the_key_rate_limited_until_retry_after_and_is_not_recorded_again(
    niyra: Niyra, make_account: Any, store_key: Any, observed: list[str]
) -> None:
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key("ratelimit"))
    before = timezone.now()

    for call in range(3):
        with pytest.raises(anthropic.RateLimitError):
            niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
        if call == 0:
            key_recorded(user, "anthropic", KeyStatus.RATE_LIMITED)
            time.sleep(SETTLE)

    key = _key(user, "anthropic")
    assert key.status == KeyStatus.RATE_LIMITED
    assert key.rate_limited_until is not None
    assert key.rate_limited_until >= before + timedelta(seconds=RETRY_AFTER_SECONDS)
    # The first 429 is news; the next ones, inside the window the snapshot now knows, are not.
    assert observed == ["rate_limited"]
    assert _routed_checks(key) == [KeyStatus.RATE_LIMITED]
    assert key.last_used_at is not None


def test_quota_exhausted_iskey_recorded(niyra: Niyra, make_account: Any, store_key: Any, observed: list[str]) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key("noquota"))

    with pytest.raises(openai.RateLimitError):
        niyra.openai(user).chat.completions.create(model=GPT, messages=HELLO)

    assert key_recorded(user, "openai", KeyStatus.QUOTA_EXHAUSTED).status == KeyStatus.QUOTA_EXHAUSTED
    assert observed == ["quota_exhausted"]


def test_a_success_on_a_key_known_bad_is_its_recovery(
    niyra: Niyra, make_account: Any, store_key: Any, observed: list[str]
) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key(), status=KeyStatus.QUOTA_EXHAUSTED)

    niyra.openai(user).chat.completions.create(model=GPT, messages=HELLO)
    key_recorded(user, "openai", KeyStatus.VALID)
    time.sleep(SETTLE)
    niyra.openai(user).chat.completions.create(model=GPT, messages=HELLO)

    key = _key(user, "openai")
    assert key.status == KeyStatus.VALID
    assert observed == ["ok"]
    assert _routed_checks(key) == [KeyStatus.VALID]
    assert Notification.objects.filter(user=user, kind=Kind.KEY_RECOVERED).count() == 1


def test_healthy_calls_record_nothing_but_their_last_use(
    niyra: Niyra, make_account: Any, store_key: Any, observed: list[str]
) -> None:
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key())
    before = timezone.now()

    niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    with niyra.anthropic(user).messages.stream(model=CLAUDE, max_tokens=10, messages=HELLO) as stream:
        assert stream.get_final_text()

    key = _key(user, "anthropic")
    assert observed == []
    assert _routed_checks(key) == []
    assert key.status == KeyStatus.VALID
    assert key.last_used_at is not None and key.last_used_at >= before
