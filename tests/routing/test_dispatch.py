"""Routing through the real SDKs against the sandbox: who pays, exact bills, precise errors."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from accounts.services import api_token_create
from byok.models import KeyStatus, ProviderKey
from credits.models import BillingAccount, CreditHold, LedgerEntry
from credits.pricing import Usage, price_usage
from routing.gateway import local
from routing.models import RoutedCall, outcome_label
from routing.services import routing_preference_set
from sandbox import SandboxServer, anthropic_key, openai_key

# The native API is a call of the gateway, which reads and writes on its own connections: the
# data a test sets up must be committed for it to see.
pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "Say hello to the whole world"  # 6 words: the sandbox counts 6 input tokens
REPLY_WORDS = 12  # the sandbox's canned reply


def send(client: APIClient, **body: Any) -> Any:
    payload = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100}
    payload.update(body)
    return client.post("/api/llm/messages", payload, format="json")


def balance(user: Any) -> tuple[int, int]:
    account = BillingAccount.objects.get(user=user)
    return account.balance, account.reserved


def stream_response(user: Any, **body: Any) -> tuple[Any, bytes]:
    """A streamed message and its whole body, read on the event loop that served it, as an ASGI
    server does (the gateway relays on the request's loop; Django's sync test client would end
    that loop when the view returns)."""
    token = api_token_create(user=user, name="stream").plaintext
    payload = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100}
    payload.update(body, stream=True)

    async def post_and_read() -> tuple[Any, bytes]:
        response: Any = await AsyncClient().post(
            "/api/llm/messages", payload, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
        )
        if not response.streaming:  # refused before the stream started
            return response, response.content
        return response, b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(post_and_read)()


def send_stream(user: Any, **body: Any) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """A streamed message and its events."""
    response, raw = stream_response(user, **body)
    assert response.streaming, raw
    events = []
    for block in raw.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return response, events


# --- Who pays ------------------------------------------------------------------------------------


def test_platform_path_charges_exactly_the_provider_usage(make_account: Any, client_for: Any) -> None:
    user = make_account(plan="free")
    before, _ = balance(user)

    response = send(client_for(user))

    assert response.status_code == 200, response.content
    body = response.json()
    expected = price_usage("claude-sonnet-4", Usage(6, REPLY_WORDS))
    assert body["usage"] == {"input_tokens": 6, "output_tokens": REPLY_WORDS, "cached_tokens": 0}
    assert body["routing"]["key_source"] == "platform"
    assert body["routing"]["credits_charged_mc"] == expected
    assert response["X-Niyra-Key-Source"] == "platform"
    assert balance(user) == (before - expected, 0)
    call = RoutedCall.objects.get(user=user)
    assert (call.key_source, call.tokens_in, call.tokens_out, call.credits_charged, call.outcome) == (
        "platform",
        6,
        REPLY_WORDS,
        expected,
        "ok",
    )
    # The universal surface translated it to Anthropic's Messages API; the whole usage is kept.
    assert call.surface == "anthropic.messages"
    assert call.usage == {"input_tokens": 6, "output_tokens": REPLY_WORDS}
    hold = CreditHold.objects.get(account__user=user)
    assert hold.status == "settled"
    assert hold.amount >= expected  # held the request's worst case, settled what was reported


def test_byok_path_uses_the_users_key_and_charges_no_llm_credits(
    make_account: Any, client_for: Any, store_key: Any, sandbox: SandboxServer
) -> None:
    user = make_account(plan="pro")
    key = anthropic_key()
    store_key(user, "anthropic", key)
    before = balance(user)

    response = send(client_for(user))

    assert response.status_code == 200, response.content
    assert response.json()["routing"]["key_source"] == "byok"
    assert response.json()["routing"]["credits_charged_mc"] == 0
    assert balance(user) == before
    assert sandbox.log.count(key=key) == 1
    entry = LedgerEntry.objects.get(account__user=user, category="llm")
    assert (entry.amount, entry.key_source, entry.input_tokens, entry.output_tokens) == (0, "byok", 6, REPLY_WORDS)
    assert RoutedCall.objects.get(user=user).key_source == "byok"


def test_switching_to_byok_routes_the_very_next_message_through_the_key(
    make_account: Any, client_for: Any, store_key: Any
) -> None:
    user = make_account(plan="pro")
    client = client_for(user)

    first = send(client)
    store_key(user, "anthropic", anthropic_key())
    second = send(client)
    ProviderKey.objects.filter(user=user).delete()
    third = send(client)

    assert [r.json()["routing"]["key_source"] for r in (first, second, third)] == ["platform", "byok", "platform"]


def test_openai_key_serves_openai_models_only(make_account: Any, client_for: Any, store_key: Any) -> None:
    user = make_account(plan="alpha")
    store_key(user, "openai", openai_key())
    client = client_for(user)

    gpt = send(client, model="gpt-5-mini")
    claude = send(client, model="claude-haiku-4-5")

    assert gpt.json()["routing"]["key_source"] == "byok"
    assert claude.json()["routing"]["key_source"] == "platform"


def test_cached_tokens_are_billed_at_the_cached_rate(make_account: Any, client_for: Any, settings: Any) -> None:
    settings.ANTHROPIC_API_KEY = anthropic_key("cached")
    user = make_account(plan="free")

    body = send(client_for(user)).json()

    assert body["usage"] == {"input_tokens": 6, "output_tokens": REPLY_WORDS, "cached_tokens": 3}
    assert body["routing"]["credits_charged_mc"] == price_usage("claude-sonnet-4", Usage(6, REPLY_WORDS, 3))


# --- Refusals before the provider is called -----------------------------------------------------


def test_not_enough_credits_is_refused_before_any_provider_call(
    make_account: Any, client_for: Any, sandbox: SandboxServer
) -> None:
    user = make_account(plan="free", credits_mc=5)

    response = send(client_for(user))

    assert response.status_code == 402
    assert response.json()["code"] == "insufficient_credits"
    assert sandbox.log.count(api="anthropic") == 0
    assert balance(user) == (5, 0)


def test_apex_is_hidden_and_refused_without_the_entitlement(make_account: Any, client_for: Any) -> None:
    user = make_account(plan="alpha")
    client = client_for(user)

    models = [m["id"] for m in client.get("/api/llm/models").json()]
    response = send(client, model="apex")

    assert "apex" not in models
    assert response.status_code == 403
    assert response.json()["code"] == "apex_not_enabled"
    assert "hi@niyra.ai" in response.json()["message"]


def test_apex_needs_the_users_own_key_and_never_falls_back_to_credits(
    make_account: Any, client_for: Any, store_key: Any, sandbox: SandboxServer
) -> None:
    user = make_account(plan="alpha", apex=True)
    client = client_for(user)

    listed = {m["id"]: m for m in client.get("/api/llm/models").json()}
    without_key = send(client, model="fable-5")
    key = anthropic_key()
    store_key(user, "anthropic", key)
    with_key = send(client, model="apex")

    assert listed["apex"]["available"] is False
    assert listed["apex"]["reason_code"] == "apex_needs_key"
    assert without_key.status_code == 403
    assert without_key.json()["code"] == "apex_needs_key"
    assert with_key.status_code == 200
    assert with_key.json()["routing"]["key_source"] == "byok"
    assert sandbox.log.records()[-1]["model"] == "claude-fable-5"


def test_a_free_plan_with_a_saved_key_is_told_rather_than_billed(
    make_account: Any, client_for: Any, store_key: Any, sandbox: SandboxServer
) -> None:
    user = make_account(plan="free")
    store_key(user, "anthropic", anthropic_key())
    before = balance(user)

    response = send(client_for(user))

    assert response.status_code == 403
    assert response.json()["code"] == "plan_key_unusable"
    assert balance(user) == before
    assert sandbox.log.count(api="anthropic") == 0


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("together/llama-3-70b", "third_party_provider"),
        ("groq-mixtral", "third_party_provider"),
        ("claude-2.1", "model_retired"),
        ("gpt-3.5-turbo", "model_retired"),
        ("claude-sonnet-5", "model_not_supported"),
        ("text-embedding-3-small", "model_not_supported"),
    ],
)
def test_unsupported_models_are_refused_with_the_pages_words(
    make_account: Any, client_for: Any, sandbox: SandboxServer, model: str, code: str
) -> None:
    user = make_account(plan="pro")

    response = send(client_for(user), model=model)

    assert response.status_code == 400
    assert response.json()["code"] == code
    if code == "third_party_provider":
        assert "Use a Niyra-hosted tier instead" in response.json()["message"]
    if code == "model_retired":
        assert response.json()["message"].startswith(f"{model} was retired by its provider. Use ")
    assert sandbox.log.records() == []


# --- Provider errors -------------------------------------------------------------------------


def test_a_401_on_a_routed_call_marks_the_key_invalid_and_says_so(
    make_account: Any, client_for: Any, store_key: Any, sandbox: SandboxServer
) -> None:
    user = make_account(plan="pro")
    key = anthropic_key("invalid")
    store_key(user, "anthropic", key)
    client = client_for(user)
    before = balance(user)

    first = send(client)
    second = send(client)

    assert first.status_code == 400
    assert first.json()["code"] == "key_rejected"
    assert "Update it or disconnect it" in first.json()["message"]
    assert ProviderKey.objects.get(user=user).status == KeyStatus.INVALID
    assert AuditEvent.objects.filter(subject=user, event="provider_key.marked_invalid").count() == 1
    assert second.json()["code"] == "key_rejected"
    assert sandbox.log.count(key=key) == 1  # the second message never reached the provider
    assert balance(user) == before


def test_rate_limited_key_passes_retry_after_on_and_costs_nothing(
    make_account: Any, client_for: Any, store_key: Any
) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key("ratelimit"), status=KeyStatus.RATE_LIMITED)
    before = balance(user)

    response = send(client_for(user), model="gpt-4.1")

    assert response.status_code == 429
    assert response.json()["code"] == "rate_limited"
    assert response["Retry-After"] == "7"
    assert balance(user) == before


def test_opt_in_fallback_serves_a_rate_limited_byok_call_on_credits(
    make_account: Any, client_for: Any, store_key: Any
) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key("noquota"))
    routing_preference_set(user=user, fallback_to_credits=True)
    before, _ = balance(user)

    response = send(client_for(user), model="gpt-4.1")

    assert response.status_code == 200, response.content
    assert response.json()["routing"]["key_source"] == "platform"
    charged = price_usage("gpt-4.1", Usage(6, REPLY_WORDS))
    assert balance(user) == (before - charged, 0)
    outcomes = sorted(RoutedCall.objects.filter(user=user).values_list("key_source", "outcome"))
    assert outcomes == [("byok", "quota_exhausted"), ("platform", "ok")]


def test_quota_exhausted_without_fallback_is_the_users_to_fix(
    make_account: Any, client_for: Any, store_key: Any
) -> None:
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key("noquota"))

    response = send(client_for(user))

    assert response.status_code == 402
    assert response.json()["code"] == "quota_exhausted"
    assert "Top up your provider account" in response.json()["message"]


@pytest.mark.parametrize("behaviour", ["overloaded", "error", "malformed"])
def test_provider_failures_void_the_hold_and_charge_nothing(
    make_account: Any, client_for: Any, settings: Any, behaviour: str
) -> None:
    settings.ANTHROPIC_API_KEY = anthropic_key(behaviour)
    user = make_account(plan="free")
    before = balance(user)

    response = send(client_for(user))

    assert response.status_code == 503
    assert response.json()["code"] == "provider_unavailable"
    assert balance(user) == before
    assert CreditHold.objects.get(account__user=user).status == "voided"
    assert RoutedCall.objects.get(user=user).outcome == "provider_unavailable"


def test_a_hanging_provider_times_out_cleanly(make_account: Any, client_for: Any, settings: Any) -> None:
    settings.ANTHROPIC_API_KEY = anthropic_key("hang")
    settings.PROVIDER_TIMEOUT_SECONDS = 0.5
    user = make_account(plan="free")
    before = balance(user)

    response = send(client_for(user))

    assert response.status_code == 503
    assert balance(user) == before


# --- Streaming ----------------------------------------------------------------------------------


def test_streaming_platform_call_charges_from_the_final_usage(make_account: Any) -> None:
    user = make_account(plan="free")
    before, _ = balance(user)

    response, events = send_stream(user)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert events[0][0] == "routing"
    assert events[0][1]["key_source"] == "platform"
    text = "".join(data["text"] for name, data in events if name == "delta")
    assert len(text.split()) == REPLY_WORDS
    done = events[-1][1]
    expected = price_usage("claude-sonnet-4", Usage(6, REPLY_WORDS))
    assert done["usage"]["output_tokens"] == REPLY_WORDS
    assert done["routing"]["credits_charged_mc"] == expected
    assert balance(user) == (before - expected, 0)


def test_streaming_byok_call_charges_nothing(make_account: Any, store_key: Any) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key())
    before = balance(user)

    _, events = send_stream(user, model="gpt-5")

    assert events[-1][0] == "done"
    done = events[-1][1]
    entry = LedgerEntry.objects.get(account__user=user, category="llm")
    would_cost = price_usage("gpt-5", Usage(done["usage"]["input_tokens"], done["usage"]["output_tokens"]))
    assert done["routing"] == {
        "key_source": "byok",
        "provider": "openai",
        "model": "gpt-5",
        "credits_charged_mc": 0,
        "credits_charged": "0.000",
        "balance_after_mc": before[0],
        "credits_would_cost_mc": would_cost,
        "fell_back": False,
    }
    assert (entry.amount, entry.balance_after, entry.pricing["would_cost"]) == (0, before[0], would_cost)
    assert balance(user) == before


def test_a_stream_cut_short_settles_what_was_used(make_account: Any, settings: Any) -> None:
    settings.ANTHROPIC_API_KEY = anthropic_key("cut")
    user = make_account(plan="free")
    before, _ = balance(user)

    _, events = send_stream(user)

    deltas = [data for name, data in events if name == "delta"]
    assert events[-1][0] == "error"
    assert events[-1][1]["code"] == "provider_unavailable"
    assert 0 < len(deltas) < REPLY_WORDS
    expected = price_usage("claude-sonnet-4", Usage(6, len(deltas)))
    assert balance(user) == (before - expected, 0)
    call = RoutedCall.objects.get(user=user)
    assert (call.tokens_out, call.credits_charged, call.outcome) == (len(deltas), expected, "stream_cut")


# --- Bad input: clear 400s, no provider call, no charge ------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"messages": []}, 400, "invalid_input"),
        ({"messages": "hello"}, 400, "invalid_input"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_input"),
        ({"max_tokens": 0}, 400, "invalid_input"),
        ({"max_tokens": 10_000_000}, 400, "invalid_input"),
        ({"max_tokens": "100"}, 400, "invalid_input"),
        ({"stream": "yes"}, 400, "invalid_input"),
        ({"stream": 1}, 400, "invalid_input"),
        ({"temperature": "hot"}, 400, "invalid_input"),
        ({"model": 42}, 400, "invalid_input"),
    ],
)
def test_invalid_bodies_are_clear_400s(
    make_account: Any, client_for: Any, sandbox: SandboxServer, body: dict[str, Any], status: int, code: str
) -> None:
    user = make_account(plan="free")
    before = balance(user)

    response = send(client_for(user), **body)

    assert response.status_code == status
    assert response.json()["code"] == code
    assert sandbox.log.records() == []
    assert balance(user) == before


def test_malformed_json_wrong_type_and_oversized_bodies(make_account: Any, client_for: Any) -> None:
    client = client_for(make_account(plan="free"))

    malformed = client.post("/api/llm/messages", data="{nope", content_type="application/json")
    form = client.post("/api/llm/messages", data="model=x", content_type="application/x-www-form-urlencoded")
    huge = client.post(
        "/api/llm/messages",
        data=json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * 1_200_000}]}),
        content_type="application/json",
    )
    array = client.post("/api/llm/messages", data="[1, 2]", content_type="application/json")

    assert (malformed.status_code, malformed.json()["code"]) == (400, "malformed_json")
    assert (form.status_code, form.json()["code"]) == (415, "unsupported_media_type")
    assert (huge.status_code, huge.json()["code"]) == (413, "request_too_large")
    assert (array.status_code, array.json()["code"]) == (400, "invalid_input")


def test_unauthenticated_and_wrong_method(api_client: APIClient) -> None:
    anonymous = api_client.post("/api/llm/messages", {"model": "gpt-4.1"}, format="json")
    bad_token = APIClient(HTTP_AUTHORIZATION="Bearer niy_00000000_nope").post("/api/llm/messages", {}, format="json")
    wrong_method = api_client.get("/api/llm/messages")

    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "not_authenticated")
    assert (bad_token.status_code, bad_token.json()["code"]) == (401, "authentication_failed")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
    assert wrong_method["Allow"] == "POST"


def test_session_users_need_a_csrf_token(make_account: Any) -> None:
    user = make_account(plan="free")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post(
        "/api/llm/messages",
        {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
    )

    assert response.status_code == 403


def test_models_list_says_why_a_model_is_unavailable(
    make_account: Any, client_for: Callable[[Any], APIClient], store_key: Any
) -> None:
    user = make_account(plan="pro", credits_mc=0)
    store_key(user, "openai", openai_key(), status=KeyStatus.INVALID)

    listed = {m["id"]: m for m in client_for(user).get("/api/llm/models").json()}

    assert listed["gpt-4.1"]["available"] is False
    assert listed["gpt-4.1"]["reason_code"] == "key_rejected"
    assert listed["claude-haiku-4-5"]["reason_code"] == "insufficient_credits"
    assert "text-embedding-3-small" in listed


def test_a_stream_whose_reader_leaves_early_settles_what_was_relayed(make_account: Any, settings: Any) -> None:
    # Given a slow stream on credits (one token every 200 ms), so the reader leaves mid-way
    settings.ANTHROPIC_API_KEY = anthropic_key("slowchunk200")
    user = make_account(plan="free")
    before, _ = balance(user)
    body = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100}

    async def read_some_text_and_leave() -> tuple[local.Answer, int]:
        answer, chunks = await local.chat_stream(user.pk, body | {"stream": True})
        account = await BillingAccount.objects.aget(user=user)
        texts = 0
        async for chunk in chunks:
            texts += chunk.count(b'"content":"')
            if texts >= 2:
                break
        await chunks.aclose()  # type: ignore[attr-defined]
        return answer, account.reserved

    answer, reserved_while_streaming = async_to_sync(read_some_text_and_leave)()

    # Then the hold was placed, and closed when the reader left: settled for what was relayed
    assert reserved_while_streaming > 0
    call = RoutedCall.objects.get(user=user)
    assert call.outcome == "client_disconnected"
    assert 0 < call.tokens_out < REPLY_WORDS
    assert answer.receipt is not None and answer.receipt.credits_charged == call.credits_charged
    assert CreditHold.objects.get(account__user=user).status == "settled"
    assert balance(user) == (before - call.credits_charged, 0)


# --- The routed-call log, as Home shows it ------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "outcome", "label"),
    [("noquota", "quota_exhausted", "Quota exhausted"), ("ratelimit", "rate_limited", "Rate limited")],
)
def test_a_call_that_fell_back_to_credits_is_recorded_and_home_says_so(
    make_account: Any, client_for: Any, store_key: Any, word: str, outcome: str, label: str
) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key(word))
    api = client_for(user)
    assert api.put("/api/llm/preferences", {"fallback_to_credits": True}, format="json").status_code == 200

    assert send(api, model="gpt-4.1").status_code == 200

    calls = sorted(RoutedCall.objects.filter(user=user).values_list("key_source", "outcome", "fell_back"))
    assert calls == [("byok", outcome, False), ("platform", "ok", True)]
    browser = Client()
    browser.force_login(user)
    home = browser.get("/").content.decode()
    assert home.count("fell back to credits") == 1
    assert f'data-code="{outcome}">{label}</span>' in home  # the outcome in words, like the key badges
    assert f">{outcome}<" not in home


def test_a_call_without_fallback_is_not_marked(make_account: Any, client_for: Any) -> None:
    user = make_account(plan="free")

    assert send(client_for(user)).status_code == 200

    call = RoutedCall.objects.get(user=user)
    assert (call.key_source, call.outcome, call.fell_back) == ("platform", "ok", False)


@pytest.mark.parametrize(
    ("outcome", "label"),
    [
        ("ok", "OK"),
        ("quota_exhausted", "Quota exhausted"),
        ("rate_limited", "Rate limited"),
        ("key_invalid", "Key invalid"),
        ("insufficient_credits", "Not enough credits"),
        ("provider_unavailable", "Couldn't reach the provider, try again"),
        ("client_disconnected", "Client disconnected"),
        ("stream_cut", "Stream cut"),
    ],
)
def test_outcome_labels_are_words(outcome: str, label: str) -> None:
    assert outcome_label(outcome) == label


# --- What the ledger shows ------------------------------------------------------------------------


@pytest.mark.parametrize("key_source", ["platform", "byok"])
def test_the_ledger_shows_the_model_called_and_the_price_key_it_was_priced_by(
    make_account: Any, client_for: Any, store_key: Any, key_source: str
) -> None:
    # Given a call to Opus 4.6, which the price book prices as claude-opus-4-5 (like 4.7 and 4.8)
    user = make_account(plan="pro")
    if key_source == "byok":
        store_key(user, "anthropic", anthropic_key())

    response = send(client_for(user), model="claude-opus-4-6")

    assert response.status_code == 200, response.content
    assert response.json()["routing"]["key_source"] == key_source
    # Then the API's ledger names the model called, and the price key beside it
    results = client_for(user).get("/api/credits/ledger", {"category": "llm"}).json()["results"]
    assert [(row["model"], row["price_key"]) for row in results] == [("claude-opus-4-6", "claude-opus-4-5")]
    assert results[0]["description"].startswith("claude-opus-4-6")
    # And so do the dashboard's ledger and its CSV
    browser = Client()
    browser.force_login(user)
    html = browser.get("/credits/", {"category": "llm"}).content.decode()
    assert '<span data-testid="ledger-model">claude-opus-4-6</span>' in html
    assert '(priced as <span data-testid="ledger-price-key">claude-opus-4-5</span>)' in html
    text = browser.get("/credits/ledger.csv", {"category": "llm"}).content.decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(row["model"], row["price_key"]) for row in rows] == [("claude-opus-4-6", "claude-opus-4-5")]
    # And it was priced by the price key
    entry = LedgerEntry.objects.get(account__user=user, category="llm")
    if key_source == "platform":
        assert -entry.amount == price_usage("claude-opus-4-5", Usage(6, REPLY_WORDS))
        assert CreditHold.objects.get(account__user=user).price_key == "claude-opus-4-5"
        assert entry.pricing["rate"]["model"] == "claude-opus-4-5"
    else:
        assert entry.amount == 0
