"""The official openai SDK pointed at Niyra (a live ASGI server) with a Niyra API token."""

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


def test_openai_sdk_non_streaming_for_an_anthropic_model(live_asgi: str, make_account: Any) -> None:
    user = make_account(plan="free")
    before = available(user)

    completion = niyra_client(live_asgi, user).chat.completions.create(
        model="claude-haiku-4-5",
        messages=[{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello there"}],
        max_tokens=50,
    )

    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, REPLY_WORDS)
    assert available(user) == before - price_usage("claude-haiku-4", Usage(4, REPLY_WORDS))


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


def test_openai_sdk_streaming_platform_charges_exactly(live_asgi: str, make_account: Any) -> None:
    user = make_account(plan="free")
    before = available(user)

    with niyra_client(live_asgi, user).chat.completions.create(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Stream please"}], stream=True
    ) as stream:
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]

    assert len("".join(pieces).split()) == REPLY_WORDS
    assert available(user) == before - price_usage("claude-sonnet-4", Usage(2, REPLY_WORDS))


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
    ("call", "param", "reason"),
    [
        (
            {"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "hi"}]},
            "model",
            "model: text-embedding-3-small is not a chat model.",
        ),
        ({"model": "gpt-4.1", "messages": []}, "messages", "messages: "),
        ({"model": "gpt-4.1", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "robot"),
        ({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens", "1"),
    ],
)
def test_openai_sdk_errors_name_the_field(
    live_asgi: str, make_account: Any, call: dict[str, Any], param: str, reason: str
) -> None:
    """The SDK shows `error.message` and `error.param`: they say what is wrong and where."""
    client = niyra_client(live_asgi, make_account(plan="free"))

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**call)

    error = refused.value.body
    assert isinstance(error, dict)
    assert (refused.value.code, refused.value.param) == ("invalid_input", param)
    assert error["message"].startswith(f"{param}: ") and reason in error["message"], error
    assert error["message"] != "Some fields are missing or invalid."


def test_openai_sdk_embeddings_error_names_the_input(live_asgi: str, make_account: Any) -> None:
    client = niyra_client(live_asgi, make_account(plan="free"))

    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="text-embedding-3-small", input=[""])

    assert refused.value.param == "input"
    assert "input: A non-empty string" in refused.value.message


def test_openai_sdk_embeddings(live_asgi: str, make_account: Any) -> None:
    user = make_account(plan="free")

    result = niyra_client(live_asgi, user).embeddings.create(
        model="text-embedding-3-small", input="hello world", encoding_format="float"
    )

    assert len(result.data) == 1
    assert result.usage.prompt_tokens == 2


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
