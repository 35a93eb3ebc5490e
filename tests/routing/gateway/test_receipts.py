"""Receipts: every routed answer says who paid, what was charged, the balance after and, on the
user's key, what the call would have cost — and it is what the ledger says. JSON answers carry
it in headers (and in the body's `niyra` object on /v1); a stream's headers carry its call id,
and `GET /api/llm/calls/{id}` its final receipt, for its owner only."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx2
import pytest
from rest_framework.test import APIClient

from credits.models import LedgerEntry
from routing.models import RoutedCall
from tests.routing.gateway.conftest import Niyra, Payer

pytestmark = pytest.mark.django_db(transaction=True)

CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4.1"
HELLO: Any = [{"role": "user", "content": "Hello there, how are you?"}]


def ledger_receipt(user: Any, call_id: str) -> dict[str, Any]:
    """The receipt as the books have it: the call's ledger entry, and who paid."""
    call = RoutedCall.objects.get(pk=call_id, user=user)
    entry = LedgerEntry.objects.get(account__user=user, details__routed_call=call_id)
    byok = call.key_source == "byok"
    return {
        "key_source": call.key_source,
        "credits_charged_mc": -entry.amount,
        "balance_after_mc": entry.balance_after,
        "credits_would_cost_mc": entry.pricing["would_cost"] if byok else None,
    }


def header_receipt(headers: Any) -> dict[str, Any]:
    would_cost = headers.get("x-niyra-credits-would-cost")
    return {
        "key_source": headers["x-niyra-key-source"],
        "credits_charged_mc": int(headers["x-niyra-credits-charged"]),
        "balance_after_mc": int(headers["x-niyra-balance-after"]),
        "credits_would_cost_mc": int(would_cost) if would_cost is not None else None,
    }


def endpoint_receipt(client: APIClient, call_id: str) -> dict[str, Any]:
    response = client.get(f"/api/llm/calls/{call_id}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == call_id
    return {k: body[k] for k in ("key_source", "credits_charged_mc", "balance_after_mc", "credits_would_cost_mc")}


def test_json_receipts_are_the_ledger(niyra: Niyra, payer: Payer, client_for: Any) -> None:
    token = niyra.token(payer.user)
    client = client_for(payer.user)

    claude = niyra.anthropic(token=token).messages.with_raw_response.create(
        model=CLAUDE, max_tokens=100, messages=HELLO
    )
    gpt = niyra.openai(token=token).chat.completions.with_raw_response.create(model=GPT, messages=HELLO)
    universal = niyra.universal(token=token).chat.completions.with_raw_response.create(
        model=CLAUDE, messages=HELLO, max_tokens=100
    )

    for raw in (claude, gpt, universal):
        call_id = raw.headers["x-niyra-call-id"]
        books = ledger_receipt(payer.user, call_id)
        assert books["key_source"] == payer.key_source
        assert header_receipt(raw.headers) == books
        assert endpoint_receipt(client, call_id) == books
    # Niyra's own surface says it in the body too (the SDK keeps the unknown field).
    completion = universal.parse()
    assert completion.choices[0].message.content
    assert completion.niyra == ledger_receipt(payer.user, universal.headers["x-niyra-call-id"]) | {  # type: ignore[attr-defined]
        "call_id": universal.headers["x-niyra-call-id"],
        "fell_back": False,
    }
    # The native surfaces relay the provider's body untouched.
    assert "niyra" not in claude.http_response.json() and "niyra" not in gpt.http_response.json()
    if payer.path == "credits":
        charged = [RoutedCall.objects.get(pk=r.headers["x-niyra-call-id"]).credits_charged for r in (claude, gpt)]
        assert all(c > 0 for c in charged)


def test_stream_receipts_come_from_the_calls_endpoint(niyra: Niyra, payer: Payer, client_for: Any) -> None:
    token = niyra.token(payer.user)
    client = client_for(payer.user)

    claude = niyra.anthropic(token=token).messages.with_raw_response.create(
        model=CLAUDE, max_tokens=100, messages=HELLO, stream=True
    )
    claude_text = "".join(
        e.delta.text for e in claude.parse() if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    universal = niyra.universal(token=token).chat.completions.with_raw_response.create(
        model=GPT, messages=HELLO, stream=True
    )
    universal_text = "".join(c.choices[0].delta.content or "" for c in universal.parse() if c.choices)

    assert claude_text and universal_text
    for raw in (claude, universal):
        call_id = raw.headers["x-niyra-call-id"]
        assert raw.headers["x-niyra-key-source"] == payer.key_source
        assert "x-niyra-credits-charged" not in raw.headers  # not known when the stream starts
        books = ledger_receipt(payer.user, call_id)
        assert endpoint_receipt(client, call_id) == books
        assert RoutedCall.objects.get(pk=call_id).stream is True
    if payer.path == "byok":
        assert all(
            endpoint_receipt(client, r.headers["x-niyra-call-id"])["credits_would_cost_mc"] > 0
            for r in (claude, universal)
        )


def test_native_api_receipts_are_the_ledger(niyra: Niyra, payer: Payer, client_for: Any) -> None:
    """/api/llm/messages: the `routing` object of a JSON answer and of a stream's `done` event."""
    client = client_for(payer.user)
    auth = {"Authorization": f"Bearer {niyra.token(payer.user)}"}
    body = {"model": CLAUDE, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 50}
    url = f"{niyra.url}/api/llm/messages"

    answer = httpx2.post(url, json=body, headers=auth, timeout=30)
    with httpx2.stream("POST", url, json=body | {"stream": True}, headers=auth, timeout=30) as streamed:
        events = streamed.read().decode().strip().split("\n\n")
        stream_id = streamed.headers["x-niyra-call-id"]
    done = next(e for e in events if e.startswith("event: done"))
    done_routing = json.loads(done.split("data: ", 1)[1])["routing"]

    assert answer.status_code == 200
    call_id = answer.json()["id"]
    assert answer.headers["x-niyra-call-id"] == call_id
    for routing, cid in ((answer.json()["routing"], call_id), (done_routing, stream_id)):
        books = ledger_receipt(payer.user, cid)
        assert {k: routing[k] for k in books} == books
        assert endpoint_receipt(client, cid) == books
    assert header_receipt(answer.headers) == ledger_receipt(payer.user, call_id)


def test_the_calls_endpoint_shows_a_call_to_its_owner_only(niyra: Niyra, make_account: Any, client_for: Any) -> None:
    owner, other = make_account(plan="free"), make_account(plan="free")
    raw = niyra.anthropic(owner).messages.with_raw_response.create(model=CLAUDE, max_tokens=20, messages=HELLO)
    call_id = raw.headers["x-niyra-call-id"]

    theirs = client_for(other).get(f"/api/llm/calls/{call_id}")
    unknown = client_for(other).get(f"/api/llm/calls/{uuid.uuid4()}")
    signed_out = APIClient().get(f"/api/llm/calls/{call_id}")
    mine = client_for(owner).get(f"/api/llm/calls/{call_id}")

    assert (theirs.status_code, unknown.status_code) == (404, 404)
    assert theirs.json() == unknown.json()
    assert theirs.json()["code"] == "not_found"
    assert signed_out.status_code == 401
    assert mine.status_code == 200
    assert mine.json()["credits_charged_mc"] == RoutedCall.objects.get(pk=call_id).credits_charged > 0
