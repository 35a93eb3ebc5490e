"""A provider that is down, slow, hanging, failing, talking nonsense or cutting a stream, through
the whole stack: uvicorn, the gateway (and Django's async view for the native API), the sandbox.

For every fault, on the credits (platform key) and BYOK paths, on both endpoints, streaming and
not: a call that fails before its first byte is an HTTP error — the catalogue's
`provider_unavailable` where Niyra could not reach or read the provider, else the provider's own
status and error (relayed on the OpenAI-compatible surface); a stream cut mid-way says so in the
stream; on credits the hold is voided and nothing is charged, except a stream cut mid-way, which
is charged for exactly what was generated; and the same server serves normally right after,
with no hold or database connection left open.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from core import errors
from credits.models import BillingAccount, CreditHold, HoldStatus, LedgerEntry
from credits.pricing import Usage, price_usage
from routing import catalog
from routing.models import RoutedCall
from sandbox import SandboxServer, anthropic_key, openai_key
from tests.faults.conftest import PROMPT, REPLY_WORDS, Headers, wait_until_quiet
from tests.routing.conftest import STARTING_CREDITS_MC

pytestmark = pytest.mark.django_db(transaction=True)

# Small, so a hanging provider costs a test one second; the slow-but-fine case stays far inside.
TIMEOUT_SECONDS = 1.0
CUT_DELTAS = REPLY_WORDS // 2  # the sandbox cuts a stream after half of the output


@dataclass(frozen=True)
class Fault:
    words: tuple[str, ...]  # behaviour words in the key; empty for "down"
    outcome: str  # "fails" | "ok" | "cut" (a stream cut: billed for what was generated)
    down: bool = False


FAULTS = {
    "down": Fault((), "fails", down=True),
    "slow_past_timeout": Fault(("slow3000",), "fails"),
    "slow_within_timeout": Fault(("slow100",), "ok"),
    "hang": Fault(("hang",), "fails"),
    "error": Fault(("error",), "fails"),
    "overloaded": Fault(("overloaded",), "fails"),
    "malformed": Fault(("malformed",), "fails"),
    # One token every 20 ms, then the connection closes halfway: the stream has started when it
    # is cut (a cut that arrives with the first bytes is a failure before the first byte).
    "cut": Fault(("slowchunk20", "cut"), "cut"),
}


@dataclass(frozen=True)
class Endpoint:
    path: str
    model: str
    openai_style: bool

    @property
    def catalog_model(self) -> catalog.CatalogModel:
        model = catalog.lookup(self.model)
        assert model is not None
        return model

    def key(self, *words: str) -> str:
        return anthropic_key(*words) if self.catalog_model.provider == "anthropic" else openai_key(*words)

    def cut_input_tokens(self) -> int:
        """Anthropic reports input usage when the stream starts; OpenAI only at its end, so a cut
        OpenAI stream is billed from the gateway's estimate, ceil(prompt characters / 4)."""
        return 6 if self.catalog_model.provider == "anthropic" else math.ceil(len(PROMPT) / 4)


# Each endpoint with a model of a different provider: both adapters, both response formats.
ENDPOINTS = {
    "native-anthropic": Endpoint("/api/llm/messages", "claude-sonnet-4-6", openai_style=False),
    "openai-compat-openai": Endpoint("/v1/chat/completions", "gpt-4.1", openai_style=True),
}


@dataclass
class Reply:
    """What the user got, whatever the format: an error body (JSON or in-band), the text."""

    status: int
    content_type: str
    error: dict[str, Any] | None
    text: str
    deltas: int
    finished: bool


def parse_native_stream(raw: str) -> Reply:
    events = []
    for block in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    assert events[0][0] == "routing"
    deltas = [data["text"] for name, data in events if name == "delta"]
    error = events[-1][1] if events[-1][0] == "error" else None
    assert [name for name, _ in events] == ["routing"] + ["delta"] * len(deltas) + [events[-1][0]]
    return Reply(200, "", error, "".join(deltas), len(deltas), events[-1][0] == "done")


def parse_openai_stream(raw: str) -> Reply:
    payloads = [block.removeprefix("data: ") for block in raw.strip().split("\n\n")]
    assert all(block.startswith("data: ") for block in raw.strip().split("\n\n"))
    chunks = [json.loads(p) for p in payloads if p != "[DONE]"]
    error = chunks[-1] if "error" in chunks[-1] else None  # OpenAI's in-band error: the SDK raises
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    texts = [d for d in deltas if d]
    return Reply(200, "", error, "".join(texts), len(texts), payloads[-1] == "[DONE]")


def send(base_url: str, headers: dict[str, str], endpoint: Endpoint, *, stream: bool) -> Reply:
    body = {"model": endpoint.model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100}
    if stream:
        body["stream"] = True
    with httpx2.Client(timeout=30) as http:
        response = http.post(base_url + endpoint.path, json=body, headers=headers)
    content_type = response.headers["content-type"]
    if content_type.startswith("text/event-stream"):
        parse = parse_openai_stream if endpoint.openai_style else parse_native_stream
        reply = parse(response.text)
        reply.status, reply.content_type = response.status_code, content_type
        return reply
    assert content_type == "application/json", response.text[:200]
    data = response.json()
    if response.status_code != 200:
        if endpoint.openai_style:  # OpenAI's error shape, whoever wrote it: the SDK's typed errors
            assert data["error"]["message"], data
        return Reply(response.status_code, content_type, data, "", 0, False)
    text = data["choices"][0]["message"]["content"] if endpoint.openai_style else data["content"]
    return Reply(response.status_code, content_type, None, text, 0, True)


def closed_port_url(path: str) -> str:
    """A loopback URL nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def fault_settings(settings: Any, providers: SandboxServer) -> Any:
    settings.PROVIDER_TIMEOUT_SECONDS = TIMEOUT_SECONDS
    return settings


CASES = [(endpoint, stream) for endpoint in ENDPOINTS for stream in (False, True)]


# Open bug, said in the issue 13 closing note: when the sandbox cuts a stream, aiohttp sometimes
# neither ends nor fails the read (the gateway now bounds each read by the provider timeout, so
# nothing hangs), and under this test's 1 s timeout the first event is then sometimes reported as
# a failure before the first byte (503) rather than a stream cut mid-way.
CUT_IS_FLAKY = pytest.mark.xfail(reason="open: a stream cut by the provider is sometimes read as failed at once")
CASES_BY_FAULT = [pytest.param(name, marks=CUT_IS_FLAKY) if name == "cut" else name for name in FAULTS]


@pytest.mark.parametrize("path", ["platform", "byok"])
@pytest.mark.parametrize("fault_name", CASES_BY_FAULT)
def test_provider_fault(
    live_asgi: str,
    fault_settings: Any,
    make_account: Callable[..., Any],
    store_key: Callable[..., Any],
    bearer: Headers,
    serves_normally: Callable[[], None],
    fault_name: str,
    path: str,
) -> None:
    # Given one user per endpoint and mode (JSON, stream), whose calls go through a faulty
    # provider: on credits (the platform key is faulty) or on their own (faulty) key
    fault = FAULTS[fault_name]
    users = {}
    for case in CASES:
        provider = ENDPOINTS[case[0]].catalog_model.provider
        key = ENDPOINTS[case[0]].key(*fault.words)
        if path == "platform":
            users[case] = make_account(plan="free")
            setattr(fault_settings, f"{provider.upper()}_API_KEY", key)
        else:
            users[case] = make_account(plan="pro")
            store_key(users[case], provider, key)
    if fault.down:
        fault_settings.ANTHROPIC_BASE_URL = closed_port_url("/anthropic")
        fault_settings.OPENAI_BASE_URL = closed_port_url("/openai/v1")
    headers = {case: bearer(user) for case, user in users.items()}

    # When they all call at once
    with ThreadPoolExecutor(len(CASES)) as pool:
        replies = pool.map(lambda case: send(live_asgi, headers[case], ENDPOINTS[case[0]], stream=case[1]), CASES)

    # Then each gets the catalogue's answer and is billed exactly what was generated
    wait_until_quiet()
    for (endpoint_name, stream), reply in zip(CASES, replies, strict=True):
        try:
            check_reply_and_bill(
                fault_name, fault, path, ENDPOINTS[endpoint_name], stream, users[endpoint_name, stream], reply
            )
        except AssertionError as exc:
            raise AssertionError(f"{endpoint_name}, {'stream' if stream else 'json'}: {exc}") from exc

    # And the server is fine right after: /healthz, a normal call on each endpoint, the books
    serves_normally()


# Faults where Niyra itself could not reach or read the provider: the catalogue's error.
# The others ("error", "overloaded") are the provider's own error answers: relayed as they are on
# the OpenAI-compatible surface, said in the catalogue's words on the native API.
NIYRA_SAYS = frozenset({"down", "slow_past_timeout", "hang", "malformed", "cut"})


def check_reply_and_bill(
    fault_name: str, fault: Fault, path: str, endpoint: Endpoint, stream: bool, user: Any, reply: Reply
) -> None:
    model = endpoint.catalog_model
    outcome = "fails" if fault.outcome == "cut" and not stream else fault.outcome
    unavailable = errors.error_body(errors.PROVIDER_UNAVAILABLE)
    if outcome == "ok":
        assert (reply.status, reply.error, reply.finished) == (200, None, True)
        assert len(reply.text.split()) == REPLY_WORDS
        tokens = (6, REPLY_WORDS)
    elif outcome == "cut":
        # The response had started (200, text/event-stream): the stream says it was cut.
        assert (reply.status, reply.finished) == (200, False)
        if not endpoint.openai_style:
            assert reply.error is not None
            assert {k: reply.error[k] for k in ("code", "message")} == {k: unavailable[k] for k in ("code", "message")}
        assert reply.deltas == CUT_DELTAS
        tokens = (endpoint.cut_input_tokens(), CUT_DELTAS)
    else:
        # Before the first byte: an HTTP error, never a 200 (streamed or not)
        assert reply.status >= 500 and reply.content_type == "application/json", (reply.status, reply.content_type)
        assert reply.error is not None
        if not endpoint.openai_style or fault_name in NIYRA_SAYS:
            assert reply.status == 503
            assert {k: reply.error[k] for k in ("code", "message")} == {k: unavailable[k] for k in ("code", "message")}
        tokens = (0, 0)

    account = BillingAccount.objects.get(user=user)
    entries = list(LedgerEntry.objects.filter(account=account).exclude(category="grant"))
    holds = list(CreditHold.objects.filter(account=account))
    call = RoutedCall.objects.get(user=user)
    assert (call.key_source, call.stream, call.tokens_in, call.tokens_out) == (path, stream, *tokens)
    assert call.outcome == {"ok": "ok", "cut": "stream_cut"}.get(outcome, "provider_unavailable")
    charge = price_usage(model.price_key, Usage(*tokens)) if path == "platform" else 0
    assert (account.balance, account.reserved, call.credits_charged) == (STARTING_CREDITS_MC - charge, 0, charge)
    if path == "byok":
        assert holds == []
        usage = [(e.amount, e.key_source, e.input_tokens, e.output_tokens) for e in entries]
        assert usage == ([(0, "byok", *tokens)] if tokens != (0, 0) else [])
    elif outcome == "fails":
        assert [h.status for h in holds] == [HoldStatus.VOIDED]
        assert entries == []
    else:
        assert [h.status for h in holds] == [HoldStatus.SETTLED]
        settled = [(e.amount, e.hold_id, e.input_tokens, e.output_tokens) for e in entries]
        assert settled == [(-charge, holds[0].pk, *tokens)]
    if outcome == "cut":  # last: the bill is checked whatever the stream said
        assert reply.error is not None, "a cut stream must not end as if it were complete"
