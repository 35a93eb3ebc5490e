"""Dashboard "Try a message": the async view routes through the same dispatcher as the API and
shows the answer, which key served it and what it cost; errors are the catalogue's words."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import AsyncClient, Client

from byok.models import KeyStatus
from credits.models import BillingAccount
from credits.money import credits_text
from routing.models import RoutedCall
from routing.services import routing_preference_set
from sandbox import REPLY_TEXT, SandboxServer, anthropic_key, openai_key

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "/try/"
HTMX = {"HTTP_HX_REQUEST": "true"}


def _browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _send(client: Client, model: str = "claude-haiku-4-5", prompt: str = "Say hello", **extra: Any) -> str:
    response = client.post(PAGE, {"model": model, "prompt": prompt, "max_tokens": "50"}, **extra)
    assert response.status_code == 200
    return response.content.decode()


def test_page_lists_chat_models_and_defaults_to_haiku(make_account: Callable[..., Any]) -> None:
    html = _browser(make_account()).get(PAGE).content.decode()

    assert '<option value="claude-haiku-4-5" selected>' in html
    assert "text-embedding" not in html  # chat models only
    assert "apex" not in html.split("<select")[1].split("</select>")[0]  # hidden without the entitlement
    assert "Apex is alpha-gated — email hi@niyra.ai for access." in html


def test_message_on_your_key_costs_nothing(
    make_account: Callable[..., Any], store_key: Callable[..., Any], sandbox: SandboxServer
) -> None:
    user = make_account()
    stored = store_key(user, "anthropic", anthropic_key())

    html = _send(_browser(user), **HTMX)

    assert REPLY_TEXT.split()[0] in html
    assert "your Anthropic key" in html and stored.hint in html
    assert "0.000 credits" in html
    call = RoutedCall.objects.get(user=user)
    assert (call.key_source, call.credits_charged) == ("byok", 0)
    assert call.credits_would_cost > 0
    assert f"On credits it would have cost {credits_text(call.credits_would_cost)} credits." in html


def test_message_on_credits_shows_the_cost(make_account: Callable[..., Any]) -> None:
    user = make_account()

    html = _send(_browser(user), **HTMX)

    call = RoutedCall.objects.get(user=user)
    assert call.key_source == "platform" and call.credits_charged > 0
    assert "Niyra credits" in html
    assert "<html" not in html  # htmx gets the result only


def test_without_javascript_the_page_comes_back_with_the_answer(make_account: Callable[..., Any]) -> None:
    html = _send(_browser(make_account()), prompt="Hello there")

    assert "<html" in html and "Answer from Claude Haiku 4.5" in html
    assert ">Hello there</textarea>" in html


def test_invalid_key_error_with_troubleshooting(
    make_account: Callable[..., Any], store_key: Callable[..., Any]
) -> None:
    user = make_account()
    store_key(user, "anthropic", anthropic_key("invalid"))

    html = _send(_browser(user), **HTMX)

    assert "Key invalid" in html
    assert "Paste it without quotes." in html
    assert BillingAccount.objects.get(user=user).balance == 10_000_000  # not silently billed


def test_rate_limited_key_error(make_account: Callable[..., Any], store_key: Callable[..., Any]) -> None:
    user = make_account()
    store_key(user, "anthropic", anthropic_key("ratelimit"), status=KeyStatus.VALID)

    html = _send(_browser(user), **HTMX)

    assert "Rate limited" in html and "Your vendor limit was hit." in html


def test_not_enough_credits(make_account: Callable[..., Any]) -> None:
    user = make_account(plan="free", credits_mc=0)
    client = _browser(user)

    page = client.get(PAGE).content.decode()
    html = _send(client, **HTMX)

    assert "No model is available to you right now" in page
    assert "No credits left:" in page  # the reason, said once for every model
    assert "Not enough credits." in html


def test_without_credits_the_reason_is_said_once_and_send_is_disabled(make_account: Callable[..., Any]) -> None:
    user = make_account(plan="pro", credits_mc=0)
    client = _browser(user)

    page = client.get(PAGE).content.decode()
    html = _send(client, model="", **HTMX)  # a stale page or a script: Send is disabled

    assert page.count("No credits left:") == 1
    assert "(every model)" in page
    assert "Not enough credits." not in page  # not one line per model
    assert 'href="/settings/byok/">add your own key</a>' in page and 'href="/credits/">add credits</a>' in page
    assert '<button type="submit" disabled' in page
    assert " selected>" not in page
    assert "Some fields are missing or invalid." not in html
    assert 'data-code="insufficient_credits"' in html and "Not enough credits." in html
    assert not RoutedCall.objects.exists()


def test_without_credits_on_a_plan_without_byok_the_way_out_is_said(make_account: Callable[..., Any]) -> None:
    page = _browser(make_account(plan="free", credits_mc=0)).get(PAGE).content.decode()

    assert "No credits left:" in page and "or move to Pro or Alpha to bring your own key" in page
    assert "add your own key</a>" not in page


def test_a_key_on_its_own_provider_only_groups_the_others(
    make_account: Callable[..., Any], store_key: Callable[..., Any]
) -> None:
    user = make_account(plan="pro", credits_mc=0)
    store_key(user, "anthropic", anthropic_key())

    page = _browser(user).get(PAGE).content.decode()

    assert '<option value="claude-haiku-4-5" selected>Claude Haiku 4.5 — your key</option>' in page
    assert page.count("No credits left:") == 1 and "(every model)" not in page
    assert '<button type="submit">Send</button>' in page


def test_a_quota_exhausted_key_is_said_and_never_the_default(
    make_account: Callable[..., Any], store_key: Callable[..., Any]
) -> None:
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key("noquota"), status=KeyStatus.QUOTA_EXHAUSTED)

    page = _browser(user).get(PAGE).content.decode()

    assert '<option value="claude-haiku-4-5">Claude Haiku 4.5 — your key, quota exhausted</option>' in page
    assert "— your key</option>" not in page
    selected = page.split(" selected>")[1].split("</option>")[0]
    assert selected.endswith("— credits")  # an OpenAI model on credits runs; it is the default
    assert "Your Anthropic key: Quota exhausted — Top up your provider account." in page
    assert "its models won't answer" in page


def test_a_rate_limited_key_with_fallback_says_credits_take_over(
    make_account: Callable[..., Any], store_key: Callable[..., Any]
) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key("ratelimit"), status=KeyStatus.RATE_LIMITED)
    routing_preference_set(user=user, fallback_to_credits=True)

    page = _browser(user).get(PAGE).content.decode()

    assert "GPT-4.1 — your key, rate limited (falls back to credits)</option>" in page
    assert '<option value="claude-haiku-4-5" selected>Claude Haiku 4.5 — credits</option>' in page
    assert "Your OpenAI key: Rate limited" in page and "fall back to credits (you opted in)" in page


def test_a_strained_key_is_the_default_only_when_nothing_else_runs(
    make_account: Callable[..., Any], store_key: Callable[..., Any]
) -> None:
    user = make_account(plan="pro", credits_mc=0)
    store_key(user, "anthropic", anthropic_key("noquota"), status=KeyStatus.QUOTA_EXHAUSTED)

    page = _browser(user).get(PAGE).content.decode()

    assert '<option value="claude-haiku-4-5" selected>Claude Haiku 4.5 — your key, quota exhausted</option>' in page
    assert '<button type="submit">Send</button>' in page


def test_apex_without_entitlement_is_refused_in_place(make_account: Callable[..., Any]) -> None:
    html = _send(_browser(make_account()), model="apex", **HTMX)

    assert "alpha-gated" in html


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"model": "claude-haiku-4-5", "prompt": "  ", "max_tokens": "10"}, "Write a message to send."),
        ({"model": "claude-haiku-4-5", "prompt": "hi", "max_tokens": "0"}, "Max tokens is a whole number"),
        ({"model": "claude-haiku-4-5", "prompt": "hi", "max_tokens": "abc"}, "Max tokens is a whole number"),
        ({"model": "groq/llama", "prompt": "hi", "max_tokens": "10"}, "No third-party providers via BYOK yet"),
        ({"model": "", "prompt": "hi", "max_tokens": "10"}, "Choose a model."),
    ],
)
def test_bad_input_is_a_clear_message(make_account: Callable[..., Any], form: dict[str, str], message: str) -> None:
    response = _browser(make_account()).post(PAGE, form, **HTMX)

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not RoutedCall.objects.exists()


def test_huge_prompt_is_refused(make_account: Callable[..., Any]) -> None:
    html = _send(_browser(make_account()), prompt="x" * 20_001, **HTMX)

    assert "Keep the message under 20,000 characters." in html


def test_signed_out(client: Client) -> None:
    assert client.get(PAGE)["Location"] == "/login/?next=/try/"
    response = client.post(PAGE, {"prompt": "hi"}, **HTMX)
    assert response["HX-Redirect"].startswith("/login/?next=/try/")


def test_works_under_asgi(make_account: Callable[..., Any]) -> None:
    """The ASGI path (AsyncClient): the view's ORM work and rendering run off the event loop."""
    from asgiref.sync import async_to_sync

    user = make_account()

    async def send() -> Any:
        client = AsyncClient()
        await client.aforce_login(user)
        return await client.post(PAGE, {"model": "claude-haiku-4-5", "prompt": "hi", "max_tokens": "5"}, **HTMX)

    response = async_to_sync(send)()

    assert response.status_code == 200
    assert "Niyra credits" in response.content.decode()
