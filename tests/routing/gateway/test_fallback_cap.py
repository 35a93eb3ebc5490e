"""The daily cap on the fallback to credits: a BYOK call its key refused is retried on credits
only while the day's fallbacks (their worst case, until they close) fit under the cap; past it,
the user's own error stands. Concurrent fallbacks never spend more than the cap between them."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest
from anthropic import AsyncAnthropic
from django.utils import timezone

from core import errors
from credits.models import CreditHold
from routing.models import FallbackSpend, RoutedCall, RoutingPreference
from routing.services import routing_preference_set
from sandbox import anthropic_key
from tests.routing.gateway.conftest import SDK_TIMEOUT, Niyra, available

pytestmark = pytest.mark.django_db(transaction=True)

CLAUDE = "claude-sonnet-4-6"
HELLO: Any = [{"role": "user", "content": "Hello there, how are you?"}]
CONCURRENT_CALLS = 6


def _user_with_a_rate_limited_key(make_account: Any, store_key: Any) -> Any:
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key("ratelimit"))
    return user


def _fallback_hold(niyra: Niyra, user: Any) -> int:
    """The worst case one of these calls holds on fallback (read from an uncapped call)."""
    niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=100, messages=HELLO)
    return CreditHold.objects.filter(account__user=user).latest("id").amount


def _spent_on_fallback_today(user: Any) -> int:
    calls = RoutedCall.objects.filter(user=user, fell_back=True, created_at__date=timezone.now().date())
    return sum(calls.values_list("credits_charged", flat=True))


def test_concurrent_fallbacks_spend_no_more_than_the_cap(
    niyra: Niyra, make_account: Any, store_key: Any, settings: Any
) -> None:
    user = _user_with_a_rate_limited_key(make_account, store_key)
    routing_preference_set(user=user, fallback_to_credits=True)
    hold = _fallback_hold(niyra, user)
    first_call = _spent_on_fallback_today(user)
    # Room for two calls' worst cases at once; the platform key answers slowly, so the calls
    # are all in flight together.
    cap = 2 * hold + hold // 2
    routing_preference_set(user=user, fallback_to_credits=True, fallback_daily_cap_mc=cap)
    settings.ANTHROPIC_API_KEY = anthropic_key("slow700")
    token = niyra.token(user)
    before = available(user)

    async def one() -> str:
        client = AsyncAnthropic(base_url=f"{niyra.url}/anthropic", api_key=token, max_retries=0, timeout=SDK_TIMEOUT)
        try:
            await client.messages.create(model=CLAUDE, max_tokens=100, messages=HELLO)
        except anthropic.RateLimitError as exc:
            assert isinstance(exc.body, dict)
            return str(exc.body["error"]["code"])
        finally:
            await client.close()
        return "served"

    async def all_at_once() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(CONCURRENT_CALLS)))

    outcomes = asyncio.run(all_at_once())

    served = outcomes.count("served")
    assert served >= 2
    assert outcomes.count(errors.KEY_RATE_LIMITED.code) == CONCURRENT_CALLS - served >= 1
    spent = _spent_on_fallback_today(user) - first_call
    assert 0 < spent <= cap
    assert available(user) == before - spent
    # What the day's row says was taken is what was charged: every hold was trued up.
    assert FallbackSpend.objects.get(user=user).used_mc == spent
    assert RoutedCall.objects.filter(user=user, fell_back=True).count() == 1 + served


def test_a_cap_below_one_call_leaves_the_users_error(niyra: Niyra, make_account: Any, store_key: Any) -> None:
    user = _user_with_a_rate_limited_key(make_account, store_key)
    routing_preference_set(user=user, fallback_to_credits=True)
    hold = _fallback_hold(niyra, user)
    routing_preference_set(user=user, fallback_to_credits=True, fallback_daily_cap_mc=hold - 1)
    before = available(user)

    with pytest.raises(anthropic.RateLimitError) as refused:
        niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=100, messages=HELLO)

    assert isinstance(refused.value.body, dict)
    assert refused.value.body["error"]["code"] == errors.KEY_RATE_LIMITED.code
    assert refused.value.response.headers["retry-after"]
    assert available(user) == before
    assert not FallbackSpend.objects.filter(user=user, used_mc__gt=0).exists()
    # A smaller request fits: the cap counts what a call may cost, not how many calls.
    small = niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=5, messages=HELLO)
    assert small.content
    last = RoutedCall.objects.filter(user=user, fell_back=True).latest("created_at")
    assert FallbackSpend.objects.get(user=user).used_mc == last.credits_charged > 0


def test_a_refused_credits_hold_gives_the_cap_back(niyra: Niyra, make_account: Any, store_key: Any) -> None:
    user = make_account(plan="pro", credits_mc=1)
    store_key(user, "anthropic", anthropic_key("ratelimit"))
    routing_preference_set(user=user, fallback_to_credits=True, fallback_daily_cap_mc=10_000_000)

    with pytest.raises(anthropic.APIStatusError) as refused:
        niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=100, messages=HELLO)

    assert refused.value.status_code == 402
    assert FallbackSpend.objects.get(user=user).used_mc == 0


class TestSettingTheCap:
    def test_the_preferences_api_sets_and_clears_the_cap(self, make_account: Any, client_for: Any) -> None:
        user = make_account(plan="pro")
        client = client_for(user)

        set_cap = client.put(
            "/api/llm/preferences", {"fallback_to_credits": True, "fallback_daily_cap_mc": 5_000}, format="json"
        )
        kept = client.put("/api/llm/preferences", {"fallback_to_credits": True}, format="json")
        zero = client.put(
            "/api/llm/preferences", {"fallback_to_credits": True, "fallback_daily_cap_mc": 0}, format="json"
        )
        cleared = client.put(
            "/api/llm/preferences", {"fallback_to_credits": True, "fallback_daily_cap_mc": None}, format="json"
        )

        assert set_cap.json() == {"fallback_to_credits": True, "fallback_daily_cap_mc": 5_000}
        assert kept.json() == {"fallback_to_credits": True, "fallback_daily_cap_mc": 5_000}
        assert zero.status_code == 400
        assert zero.json()["code"] == "invalid_input"
        assert "more than 0" in zero.json()["detail"]["fallback_daily_cap_mc"][0]
        assert cleared.json() == {"fallback_to_credits": True, "fallback_daily_cap_mc": None}
        assert client.get("/api/llm/preferences").json() == cleared.json()

    def test_the_byok_page_panel_sets_the_cap_in_credits(self, make_account: Any, client: Any) -> None:
        user = make_account(plan="pro")
        client.force_login(user)

        page = client.get("/settings/byok/")
        saved = client.post("/settings/byok/fallback", {"fallback": "on", "cap": "2.5"}, headers={"HX-Request": "true"})
        zero = client.post("/settings/byok/fallback", {"fallback": "on", "cap": "0"}, headers={"HX-Request": "true"})
        words = client.post("/settings/byok/fallback", {"fallback": "on", "cap": "lots"}, follow=True)

        assert 'data-testid="fallback"' in page.content.decode()
        assert saved.status_code == 200 and 'value="2.5"' in saved.content.decode()
        assert RoutingPreference.objects.get(user=user).fallback_daily_cap_mc == 2_500
        assert "more than 0" in zero.content.decode()
        assert 'value="0"' in zero.content.decode() and "checked" in zero.content.decode()  # as sent, to correct
        assert "number of credits" in words.content.decode()
        assert RoutingPreference.objects.get(user=user).fallback_daily_cap_mc == 2_500
