"""The official openai SDK pointed at Niyra's universal surface (a live ASGI server) with a Niyra
API token: what tests/routing/gateway/test_sdk_universal.py leaves out (an OpenAI model streamed
on the universal surface, Niyra's and the provider's refusals there, a client leaving a native
stream)."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import openai
import pytest

from accounts.services import api_token_create
from credits.models import BillingAccount
from credits.pricing import Usage, price_usage
from routing.models import RoutedCall
from sandbox import anthropic_key, openai_key

pytestmark = pytest.mark.django_db(transaction=True)

REPLY_WORDS = 12


def niyra_client(base_url: str, user: Any) -> openai.OpenAI:
    token = api_token_create(user=user, name="sdk").plaintext
    return openai.OpenAI(api_key=token, base_url=f"{base_url}/v1", max_retries=0, timeout=20)


def available(user: Any) -> int:
    return BillingAccount.objects.get(user=user).available


def test_openai_sdk_streaming_with_usage_on_byok(live_asgi: str, make_account: Any, store_key: Any) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key())
    before = available(user)

    stream = niyra_client(live_asgi, user).chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "Count to twelve"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage]
    assert len(text.split()) == REPLY_WORDS
    assert usage[0].completion_tokens == REPLY_WORDS
    assert available(user) == before
    assert RoutedCall.objects.get(user=user).key_source == "byok"


def test_openai_sdk_sees_niyra_errors_as_sdk_exceptions(live_asgi: str, make_account: Any) -> None:
    user = make_account(plan="free", credits_mc=1)
    client = niyra_client(live_asgi, user)

    with pytest.raises(openai.APIStatusError) as no_credits:
        client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model="llama-3-70b", messages=[{"role": "user", "content": "hi"}])

    assert no_credits.value.status_code == 402
    assert no_credits.value.code == "insufficient_credits"
    assert unknown.value.code == "third_party_provider"


@pytest.mark.parametrize(
    ("call", "code", "param"),
    [
        # Niyra's own refusal, before any provider call
        (
            {"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "hi"}]},
            "model_not_supported",
            "model",
        ),
        # The provider's own validation, relayed as it answered (OpenAI's codes and params)
        ({"model": "gpt-4.1", "messages": []}, "empty_array", "messages"),
        ({"model": "gpt-4.1", "messages": [{"role": "robot", "content": "hi"}]}, "invalid_value", "messages.[0].role"),
        (
            {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
            "integer_below_min_value",
            "max_tokens",
        ),
    ],
)
def test_openai_sdk_errors_name_the_field(
    live_asgi: str, make_account: Any, call: dict[str, Any], code: str, param: str
) -> None:
    """The SDK shows `error.code`, `error.param` and `error.message`: they say what is wrong and
    where, and a refused call costs nothing."""
    user = make_account(plan="free")
    before = available(user)

    with pytest.raises(openai.BadRequestError) as refused:
        niyra_client(live_asgi, user).chat.completions.create(**call)

    error = refused.value.body
    assert isinstance(error, dict) and error["message"], error
    assert (refused.value.code, refused.value.param) == (code, param)
    assert available(user) == before
    assert BillingAccount.objects.get(user=user).reserved == 0


def test_openai_sdk_embeddings_error_names_the_input(live_asgi: str, make_account: Any) -> None:
    user = make_account(plan="free")
    before = available(user)

    with pytest.raises(openai.BadRequestError) as refused:
        niyra_client(live_asgi, user).embeddings.create(model="text-embedding-3-small", input=[""])

    assert refused.value.param == "input"
    assert "input" in refused.value.message
    assert available(user) == before


def test_client_disconnect_mid_stream_pays_for_what_was_generated_only(
    live_asgi: str, make_account: Any, settings: Any
) -> None:
    settings.ANTHROPIC_API_KEY = anthropic_key("slowchunk100")
    user = make_account(plan="free")
    before = available(user)
    token = api_token_create(user=user, name="raw").plaintext

    received = 0
    with (
        httpx2.Client(timeout=20) as http,
        http.stream(
            "POST",
            f"{live_asgi}/api/llm/messages",
            json={"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("event: delta"):
                received += 1
                if received == 3:
                    break  # the client goes away

    deadline = time.monotonic() + 10
    while not RoutedCall.objects.filter(user=user).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    call = RoutedCall.objects.get(user=user)
    assert call.outcome == "client_disconnected"
    assert received <= call.tokens_out < REPLY_WORDS
    assert call.credits_charged == price_usage("claude-sonnet-4", Usage(1, call.tokens_out))
    assert available(user) == before - call.credits_charged
    assert BillingAccount.objects.get(user=user).reserved == 0
