"""A deploy replaces the web machines: Fly sends each one's main process (the gunicorn master)
fly.toml's `kill_signal` (SIGTERM: gunicorn's graceful stop), waits `kill_timeout`, then kills it.
These tests run the production web command (gunicorn with uvicorn workers, `gunicorn.conf.py`)
in front of the sandbox and prove what that does to routed calls:

* SIGTERM while calls are in flight: the server stops accepting at once (a new connection is
  refused, so the client or Fly's proxy goes to another machine), lets the calls in flight finish
  within `WEB_GRACE_SECONDS`, then cuts what is still running and settles it by the cut-stream
  rules (a stream is billed for what it relayed, a call not yet answered costs nothing), and
  exits with status 0 on its own, before gunicorn's `graceful_timeout` would SIGKILL its worker
  (which would leave those holds open for the sweeper).
* A rolling restart of two servers under a light load: clients that retry a refused connection
  on the other server see no failure, every request is answered and billed exactly once, no hold
  is left open and the books balance.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from credits.models import BillingAccount, CreditHold, HoldStatus, LedgerEntry
from credits.pricing import Usage, price_usage
from routing import catalog
from routing.models import RoutedCall
from sandbox import SandboxServer, anthropic_key, key_id, openai_key
from tests.faults.conftest import PROMPT, REPLY_WORDS, Headers, assert_books_balance
from tests.faults.services import (  # noqa: F401 - fixture
    WebServer,
    deployment_env,
    refused_connection,
    start_web,
    wait_for,
)
from tests.routing.conftest import STARTING_CREDITS_MC

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

GRACE_SECONDS = 5  # WEB_GRACE_SECONDS of the servers under test
EXIT_BOUND_SECONDS = 30  # a hang bound for the exit after the grace, never a speed assertion
ANTHROPIC = "claude-haiku-4-5"
OPENAI = "gpt-4.1-mini"
# Inside the grace: the answer waits 1 s, then one streamed token every 0.8 s (a stream of
# SHORT_REPLY tokens ends in under 3 s; a whole reply, 12 tokens, runs far past the grace: cut).
WITHIN_GRACE = ("slow1000", "slowchunk800")
SHORT_REPLY = 2
# Past the grace: no answer for 12 s.
PAST_GRACE = ("slow12000",)


@dataclass(frozen=True)
class Call:
    """One call in flight when the server is told to stop, and how it must end."""

    name: str
    user: Any
    model: str
    stream: bool
    max_tokens: int
    ends: str  # "answered" | "cut" (a stream cut mid-way) | "unanswered" (no answer by the grace's end)
    native: bool = False  # Niyra's own API (/api/llm/messages: Django's view, the gateway in process)


@dataclass
class Seen:
    """What the client saw: the status, the streamed (or answered) text, whether it ended."""

    status: int = 0
    text: str = ""
    deltas: int = 0
    finished: bool = False
    transport_error: str = ""
    done_at: float = 0.0


def call(base_url: str, headers: dict[str, str], c: Call) -> Seen:
    """One call to /v1/chat/completions (or the native /api/llm/messages), read to its end (or
    its cut)."""
    body = {"model": c.model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": c.max_tokens}
    url = base_url + ("/api/llm/messages" if c.native else "/v1/chat/completions")
    seen = Seen()
    try:
        with httpx2.Client(timeout=60) as http:
            if not c.stream:
                response = http.post(url, json=body, headers=headers)
                seen.status = response.status_code
                if response.status_code == 200:
                    answer = response.json()
                    seen.text = answer["content"] if c.native else answer["choices"][0]["message"]["content"]
                    seen.finished = True
                return seen
            with http.stream("POST", url, json=body | {"stream": True}, headers=headers) as response:
                seen.status = response.status_code
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                        seen.finished = event == "done"
                    elif line == "data: [DONE]":
                        seen.finished = True
                    elif line.startswith("data: ") and c.native and event == "delta":
                        seen.text += orjson.loads(line.removeprefix("data: "))["text"]
                        seen.deltas += 1
                    elif line.startswith("data: ") and not c.native:
                        chunk = orjson.loads(line.removeprefix("data: "))
                        content = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
                        if content:
                            seen.text += content
                            seen.deltas += 1
    except httpx2.TransportError as exc:  # the server went away mid-answer
        seen.transport_error = type(exc).__name__
    finally:
        seen.done_at = time.monotonic()
    return seen


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def in_flight_at_sandbox(sandbox: SandboxServer, key: str | None = None) -> int:
    """Requests the sandbox has not answered yet (on the key with this `key_id`, if given)."""
    return sum(1 for r in sandbox.log.records(deep=False) if r["status"] is None and key in (None, r["key_id"]))


def test_sigterm_finishes_calls_in_flight_then_cuts_and_settles_the_rest_and_exits(
    sandbox: SandboxServer,
    settings: Any,
    make_account: Callable[..., Any],
    store_key: Callable[..., Any],
    bearer: Headers,
    start_web: Callable[..., WebServer],  # noqa: F811
) -> None:
    """SIGTERM to the gunicorn master with calls in flight on the credits and BYOK paths (JSON
    and streams): new connections are refused at once; calls that end within the grace are
    answered and billed exactly; at the grace's end a stream still running is cut and billed
    for exactly the tokens its client received, a call not yet answered costs nothing; no hold
    is left open, the books balance, and the server exits with status 0 on its own."""
    # Given a web server with a grace of GRACE_SECONDS, whose platform keys are slow: Anthropic's
    # answers within the grace, OpenAI's not before it ends (and one gateway database connection:
    # the calls cut at the grace's end queue for it, so a server that exits before their books
    # are written leaves holds open)
    env = deployment_env(
        redis_url=str(settings.REDIS_URL),
        sandbox=sandbox,
        WEB_GRACE_SECONDS=str(GRACE_SECONDS),
        ANTHROPIC_API_KEY=anthropic_key(*WITHIN_GRACE),
        OPENAI_API_KEY=openai_key(*PAST_GRACE),
        GATEWAY_DB_POOL_MIN="1",
        GATEWAY_DB_POOL_MAX="1",
    )
    server = start_web(env, "a")
    # and calls on credits (free plan) and on the users' own keys, of each kind of ending
    byok_within, byok_past = make_account(plan="pro"), make_account(plan="pro")
    store_key(byok_within, "anthropic", anthropic_key(*WITHIN_GRACE))
    store_key(byok_past, "openai", openai_key(*PAST_GRACE))
    calls = [
        Call("credits json", make_account(plan="free"), ANTHROPIC, False, 100, "answered"),
        Call("credits short stream", make_account(plan="free"), ANTHROPIC, True, SHORT_REPLY, "answered"),
        Call("credits long stream", make_account(plan="free"), ANTHROPIC, True, 100, "cut"),
        Call("credits json past the grace", make_account(plan="free"), OPENAI, False, 100, "unanswered"),
        Call("credits stream past the grace", make_account(plan="free"), OPENAI, True, 100, "unanswered"),
        Call("byok json", byok_within, ANTHROPIC, False, 100, "answered"),
        Call("byok long stream", byok_within, ANTHROPIC, True, 100, "cut"),
        Call("byok json past the grace", byok_past, OPENAI, False, 100, "unanswered"),
        Call("native json past the grace", make_account(plan="free"), OPENAI, False, 100, "unanswered", native=True),
        Call("native long stream", make_account(plan="free"), ANTHROPIC, True, 100, "cut", native=True),
    ]
    headers = {c.name: bearer(c.user) for c in calls}
    sandbox.log.clear()

    # When they are all in flight at the provider and the master gets SIGTERM (a deploy)
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call, server.url, headers[c.name], c) for c in calls]
        wait_for(lambda: in_flight_at_sandbox(sandbox) == len(calls), timeout=30, what="every call in flight")
        server.signal(signal.SIGTERM)

        # Then new connections are refused at once, while the calls are still in flight
        wait_for(lambda: refused(server.port), timeout=10, what="new connections to be refused")
        refused_at = time.monotonic()
        seen = {
            c.name: future.result(timeout=GRACE_SECONDS + EXIT_BOUND_SECONDS)
            for c, future in zip(calls, futures, strict=True)
        }

    # and the server exits on its own, with status 0, without gunicorn killing its worker
    assert server.wait_exit(timeout=EXIT_BOUND_SECONDS) == 0, server.log()[-3000:]
    assert "SIGKILL" not in server.log(), server.log()[-3000:]

    # and each call ended as its timing says, and was billed exactly for what its client got
    failures = []
    for c in calls:
        try:
            check_call(c, seen[c.name], refused_at)
        except AssertionError as exc:
            failures.append(f"{c.name}: {exc} (saw {seen[c.name]})")
    assert failures == []

    # and no hold is open, and the books balance
    assert not CreditHold.objects.filter(status=HoldStatus.OPEN).exists()
    assert_books_balance()


def check_call(c: Call, seen: Seen, refused_at: float) -> None:
    """The call ended as `c.ends` says, its routed-call row says the same, and it was billed for
    exactly what its client got: the hold settled for it on credits, a zero-cost usage entry on
    the user's own key (none for a call never answered)."""
    model = catalog.lookup(c.model)
    assert model is not None
    rows = list(RoutedCall.objects.filter(user=c.user, stream=c.stream))
    assert len(rows) == 1, f"{len(rows)} routed-call rows (none: the call was never closed)"
    routed = rows[0]
    if c.ends == "answered":
        assert (seen.status, seen.finished, seen.transport_error) == (200, True, "")
        assert seen.done_at > refused_at, "it must still have been in flight when new connections were refused"
        tokens, outcome = (6, min(c.max_tokens, REPLY_WORDS)), "ok"
        assert len(seen.text.split()) == tokens[1]
    elif c.ends == "cut":
        assert (seen.status, seen.finished) == (200, False)
        assert 0 < seen.deltas < REPLY_WORDS
        tokens, outcome = (6, seen.deltas), "stream_cut"
    else:
        assert seen.status >= 500 or seen.transport_error, "a call never answered must not look answered"
        tokens, outcome = (0, 0), "cancelled"
    assert (routed.outcome, routed.tokens_in, routed.tokens_out) == (outcome, *tokens)

    account = BillingAccount.objects.get(user=c.user)
    if routed.key_source == "platform":
        charge = price_usage(model.price_key, Usage(*tokens)) if tokens != (0, 0) else 0
        assert routed.credits_charged == charge
        assert (account.balance, account.reserved) == (STARTING_CREDITS_MC - charge, 0)
        (hold,) = CreditHold.objects.filter(account=account)
        assert hold.status == (HoldStatus.SETTLED if charge else HoldStatus.VOIDED)
    else:
        assert routed.credits_charged == 0
        assert (account.balance, account.reserved) == (STARTING_CREDITS_MC, 0)
        usage = LedgerEntry.objects.filter(account=account, amount=0, key_source="byok", input_tokens=tokens[0])
        assert usage.filter(output_tokens=tokens[1]).count() == (0 if tokens == (0, 0) else 1)


# --- A rolling restart under load -------------------------------------------------------------

LOAD_CLIENTS = 4
LOAD_WORDS = ("slow1000", "slowchunk100")  # a JSON answer in 1 s, a stream in about 2 s


@dataclass(frozen=True)
class Kind:
    name: str
    user: Any
    model: str
    stream: bool


@dataclass
class Outcome:
    kind: str
    call_id: str = ""
    error: str = ""


def load_request(
    servers: list[WebServer], first: int, kind: Kind, headers: dict[str, str], refusals: list[str]
) -> Outcome:
    """One request on a fresh connection, sent to the other server each time a connection is
    refused (noted in `refusals`); any other failure is recorded, not retried."""
    outcome = Outcome(kind.name)
    body = {"model": kind.model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100}
    for attempt in range(200):  # a hang bound: both servers refusing for long is a failure
        server = servers[(first + attempt) % len(servers)]
        try:
            with (
                httpx2.Client(timeout=60) as http,  # a fresh connection per request
                http.stream(
                    "POST", server.url + "/v1/chat/completions", json=body | {"stream": kind.stream}, headers=headers
                ) as response,
            ):
                text = response.read().decode()
        except httpx2.ConnectError as exc:
            if not refused_connection(exc):
                outcome.error = f"{type(exc).__name__}: {exc}"
                return outcome
            refusals.append(server.name)
            if attempt % 2:  # both refused: wait a little (never happens in a rolling restart)
                time.sleep(0.05)
            continue
        except httpx2.TransportError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            return outcome
        outcome.call_id = response.headers.get("x-niyra-call-id", "")
        if response.status_code != 200:
            outcome.error = f"{response.status_code}: {text[:200]}"
        elif kind.stream and not text.rstrip().endswith("data: [DONE]"):
            outcome.error = f"incomplete stream: {text[-200:]}"
        elif not kind.stream and len(orjson.loads(text)["choices"][0]["message"]["content"].split()) != REPLY_WORDS:
            outcome.error = f"incomplete answer: {text[:200]}"
        return outcome
    outcome.error = "every server refused"
    return outcome


@pytest.mark.slow
def test_a_rolling_restart_under_load_fails_no_request_and_bills_each_once(
    sandbox: SandboxServer,
    settings: Any,
    make_account: Callable[..., Any],
    store_key: Callable[..., Any],
    bearer: Headers,
    tmp_path: Path,
) -> None:
    """Two web servers under a light load of credits and BYOK calls (JSON and streams), clients
    retrying a refused connection on the other server; server A is restarted (SIGTERM, its exit,
    a new one on the same port, ready), then B. No request fails; every request the clients had
    answered is one routed call, billed once; no hold is left open; the books balance."""
    # Given two web servers, one worker each, whose providers answer in 1 to 2 s (each with a
    # platform key of its own, so the sandbox's log tells which one a credits call is on)
    env = deployment_env(
        redis_url=str(settings.REDIS_URL),
        sandbox=sandbox,
        WEB_GRACE_SECONDS=str(GRACE_SECONDS),
        OPENAI_API_KEY=openai_key(*LOAD_WORDS),
    )
    platform_keys = {name: anthropic_key(*LOAD_WORDS) for name in ("a", "b")}
    servers = [WebServer(name, env | {"ANTHROPIC_API_KEY": key}, tmp_path) for name, key in platform_keys.items()]
    # and credits users and BYOK users calling, JSON and streams
    byok = [make_account(plan="pro") for _ in range(2)]
    for user in byok:
        store_key(user, "openai", openai_key(*LOAD_WORDS))
    credits = [make_account(plan="free") for _ in range(2)]
    kinds = [
        Kind("credits json", credits[0], ANTHROPIC, stream=False),
        Kind("credits stream", credits[1], ANTHROPIC, stream=True),
        Kind("byok json", byok[0], OPENAI, stream=False),
        Kind("byok stream", byok[1], OPENAI, stream=True),
    ]
    headers = {kind.name: bearer(kind.user) for kind in kinds}
    outcomes: list[Outcome] = []
    refusals: list[str] = []
    stop = threading.Event()

    def client(number: int) -> None:
        sent = 0
        while not stop.is_set():
            kind = kinds[(number + sent) % len(kinds)]
            outcomes.append(load_request(servers, number + sent, kind, headers[kind.name], refusals))
            sent += 1

    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        clients = [threading.Thread(target=client, args=(n,)) for n in range(LOAD_CLIENTS)]
        for thread in clients:
            thread.start()

        # When each server in turn is stopped as a deploy stops it, and started again once the
        # other serves (the load runs all along)
        for server in servers:
            answered = len(outcomes)
            wait_for(lambda n=answered: len(outcomes) >= n + LOAD_CLIENTS, timeout=60, what="the load to run")
            busy = key_id(platform_keys[server.name])
            wait_for(
                lambda k=busy: in_flight_at_sandbox(sandbox, k), timeout=30, what=f"a call in flight on {server.name}"
            )
            server.signal(signal.SIGTERM)
            assert server.wait_exit(timeout=GRACE_SECONDS + EXIT_BOUND_SECONDS) == 0, server.log()[-3000:]
            # (a machine being replaced is away for a while: the load meets it refusing)
            wait_for(lambda n=server.name: n in refusals, timeout=30, what=f"a client to be refused by {server.name}")
            server.start().wait_ready()
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    finally:
        stop.set()
        for server in servers:
            server.stop()

    # Then no request failed (those refused went to the other server)
    failures = [o for o in outcomes if o.error or not o.call_id]
    assert failures == [], failures[:5]
    assert len(outcomes) >= 3 * LOAD_CLIENTS
    # and every answer is one routed call: none lost, none made twice
    client_ids = sorted(o.call_id for o in outcomes)
    users = [kind.user for kind in kinds]
    rows = list(RoutedCall.objects.filter(user__in=users).values_list("id", "outcome", "tokens_in", "tokens_out"))
    assert sorted(str(row[0]) for row in rows) == client_ids
    assert {row[1:] for row in rows} == {("ok", 6, REPLY_WORDS)}
    # and billed once each: one charge per credits call, one usage entry per BYOK call
    for kind in kinds:
        calls = sum(1 for o in outcomes if o.kind == kind.name)
        account = BillingAccount.objects.get(user=kind.user)
        entries = LedgerEntry.objects.filter(account=account).exclude(category="grant")
        assert entries.count() == calls, kind.name
        model = catalog.lookup(kind.model)
        assert model is not None
        charge = price_usage(model.price_key, Usage(6, REPLY_WORDS)) if kind.name.startswith("credits") else 0
        assert (account.balance, account.reserved) == (STARTING_CREDITS_MC - calls * charge, 0), kind.name
    # and no hold is left open, and the books balance
    assert not CreditHold.objects.filter(status=HoldStatus.OPEN).exists()
    assert_books_balance()
