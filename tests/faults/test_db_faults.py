"""PostgreSQL drops the app's connections in the middle of a burst of paid calls, or becomes
unreachable while calls are at the provider.

The backends of this test's own database are terminated (`pg_terminate_backend`; never another
database's), twice, while calls are in flight: pooled idle connections, connections mid-query
and mid-transaction alike, Django's and the gateway's (its own async pool, which holds and
settles every routed call). Every request must still end cleanly (a 200, or a catalogue error as
JSON or in the stream; no hung request, no HTML page, no broken response), no money may move
half-way (each hold settled with its one entry, or voided, or left open only when its call
could not reach the database, for the sweeper to release), the books must balance, and the same
server must serve normally afterwards (the pool recovers).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx2
import psycopg
import pytest
from django.db import connection
from django.utils import timezone
from psycopg import sql

from core.errors import CATALOGUE
from credits.models import BillingAccount, Category, CreditHold, HoldStatus, LedgerEntry
from credits.services.holds import credit_holds_expire
from credits.tasks import expire_holds
from sandbox import anthropic_key, openai_key
from tests.faults.conftest import PROMPT, Headers, assert_books_balance, pooled_connections_in_use, wait_for
from tests.routing.conftest import STARTING_CREDITS_MC

pytestmark = [pytest.mark.django_db(transaction=True)]

CALLS = 40
USERS = 4
LAUNCH_GAP_SECONDS = 0.025  # the burst is spread out, so there are calls in flight at each kill
CLIENT_TIMEOUT_SECONDS = 60  # a request still unanswered by then is hung
UNREACHABLE_CALLS = 8


@dataclass
class Outcome:
    status: int | None = None
    content_type: str = ""
    error: dict[str, Any] | None = None  # a catalogue error body, whether JSON or in the stream
    complete: bool = False  # a 200 that ran to its end (JSON body, `done`, or `[DONE]`)
    problem: str = ""  # anything that is not a clean answer


def stream_end(raw: str, *, openai_style: bool) -> tuple[dict[str, Any] | None, bool]:
    """The in-band error (if any) and whether the stream finished, from an SSE body."""
    last = raw.strip().split("\n\n")[-1]
    data = dict(line.split(": ", 1) for line in last.splitlines())["data"]
    if openai_style:
        if data == "[DONE]":
            return None, True
        payload = json.loads(data)
        return (payload, False) if "code" in payload else (None, False)
    name = dict(line.split(": ", 1) for line in last.splitlines()).get("event")
    return (json.loads(data), False) if name == "error" else (None, name == "done")


def call(base_url: str, headers: dict[str, str], number: int) -> Outcome:
    openai_style, stream = number % 2 == 1, number % 4 >= 2
    path = "/v1/chat/completions" if openai_style else "/api/llm/messages"
    model = "gpt-4.1-mini" if number % 3 == 0 else "claude-haiku-4-5"
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 50, "stream": stream}
    outcome = Outcome()
    try:
        with httpx2.Client(timeout=CLIENT_TIMEOUT_SECONDS) as http:
            response = http.post(base_url + path, json=body, headers=headers)
    except httpx2.HTTPError as exc:
        outcome.problem = f"no clean response: {type(exc).__name__}: {exc}"
        return outcome
    outcome.status, outcome.content_type = response.status_code, response.headers.get("content-type", "")
    if outcome.content_type.startswith("text/event-stream") and response.status_code == 200:
        outcome.error, outcome.complete = stream_end(response.text, openai_style=openai_style)
        if not outcome.complete and outcome.error is None:
            outcome.problem = f"a stream that neither finished nor said why: {response.text[-200:]!r}"
    elif outcome.content_type == "application/json":
        if response.status_code == 200:
            outcome.complete = True
        else:
            outcome.error = response.json()
    else:
        outcome.problem = f"HTTP {response.status_code} {outcome.content_type}: {response.text[:200]!r}"
    if outcome.error is not None:
        spec = CATALOGUE.get(outcome.error.get("code", ""))
        if spec is None or (response.status_code != 200 and spec.status != response.status_code):
            outcome.problem = f"HTTP {response.status_code}, not a catalogue error: {outcome.error}"
    return outcome


def control_connection() -> psycopg.Connection[Any]:
    """A connection to the test database outside the app's pool, to watch and kill the app's."""
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    return psycopg.connect(**params, autocommit=True)


def terminate_app_backends(control: psycopg.Connection[Any]) -> int:
    """Terminate every other backend of this (test) database: never another database's."""
    rows = control.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return sum(1 for (terminated,) in rows if terminated)


@contextlib.contextmanager
def connections_refused(control: psycopg.Connection[Any]) -> Iterator[None]:
    """The test database refuses new connections (as an unreachable server would), for every
    pool of the app, Django's and the gateway's; the control connection stays. Set from the
    maintenance database: a database can't refuse connections from one of its own."""
    name = sql.Identifier(control.info.dbname)
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    with psycopg.connect(**params | {"dbname": "postgres"}, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        try:
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))


def hold_counts(control: psycopg.Connection[Any]) -> tuple[int, int]:
    """How many holds are open, and how many were created, as the database has them now."""
    row = control.execute("SELECT count(*) FILTER (WHERE status = 'open'), count(*) FROM credits_credithold").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def wait_for_holds(control: psycopg.Connection[Any], *, open_at_least: int, created_at_least: int = 0) -> None:
    deadline = time.monotonic() + CLIENT_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        opened, created = hold_counts(control)
        if opened >= open_at_least and created >= created_at_least:
            return
        time.sleep(0.005)
    raise AssertionError("the burst never had calls in flight")


def summary(outcomes: list[Outcome]) -> str:
    counts = Counter(
        o.problem[:60] or ("served" if o.complete else f"{o.status} {o.error and o.error.get('code')}")
        for o in outcomes
    )
    return ", ".join(f"{n} x {what}" for what, n in counts.most_common())


def renew_own_connection() -> None:
    """The test's own connection comes from the pool the server's Django side uses (one
    process): give it back and drop the pool's dead ones, so the test's next query is served."""
    connection.close()
    if connection.pool is not None:  # type: ignore[attr-defined]
        connection.pool.check()  # type: ignore[attr-defined]


@pytest.fixture
def own_connection_renewed(transactional_db: None) -> Iterator[None]:
    """The test's own pooled connection is terminated too: renewed before the teardown (which
    flushes the database through it), whatever the test did."""
    yield
    renew_own_connection()


def test_connections_dropped_mid_burst(
    own_connection_renewed: None,
    live_asgi: str,
    settings: Any,
    providers: Any,
    make_account: Callable[..., Any],
    bearer: Headers,
    serves_normally: Callable[[], None],
) -> None:
    # Given paid calls that take a while at the provider, from a few users
    settings.ANTHROPIC_API_KEY = anthropic_key("slow300")
    settings.OPENAI_API_KEY = openai_key("slow300")
    headers = [bearer(make_account(plan="free")) for _ in range(USERS)]

    def launch(number: int) -> Outcome:
        time.sleep(number * LAUNCH_GAP_SECONDS)
        return call(live_asgi, headers[number % USERS], number)

    # When PostgreSQL drops the app's connections twice while calls are in flight: once when
    # some calls hold credits at the provider, again once more calls have reached the database
    connection.close()  # the test's own goes back to the pool, to be dropped with the app's
    with control_connection() as control, ThreadPoolExecutor(CALLS) as pool:
        futures = [pool.submit(launch, number) for number in range(CALLS)]
        wait_for_holds(control, open_at_least=3)
        first = terminate_app_backends(control)
        wait_for_holds(control, open_at_least=1, created_at_least=hold_counts(control)[1] + CALLS // 4)
        second = terminate_app_backends(control)
        outcomes = [future.result() for future in futures]
    what_happened = f"terminated {first} then {second} backends; {summary(outcomes)}"

    # Then every request ended cleanly: a 200 that finished, or a catalogue error
    assert first > 0 and second > 0, what_happened
    assert [o.problem for o in outcomes if o.problem] == [], what_happened

    # And after a drop while the server is idle, the first request to meet a dead connection of
    # a pool (Django's, the gateway's) fails cleanly and takes every other dead one out of that
    # pool: once each pool has been met, calls are served
    wait_for(lambda: pooled_connections_in_use() == 0, "every pooled connection is returned")
    with control_connection() as control:
        idle = terminate_app_backends(control)
    after = [call(live_asgi, headers[0], number) for number in range(4)]
    assert idle > 1
    for outcome in after[:2]:
        assert outcome.problem == "" and (
            outcome.complete or (outcome.error or {}).get("code") == "database_unavailable"
        )
    assert after[2].complete and after[3].complete, after
    renew_own_connection()

    # And no money moved half-way: a hold left open (its call could not reach the database) is
    # released by the sweeper; every settled hold has exactly its one entry, nothing else has any
    stuck = CreditHold.objects.filter(status=HoldStatus.OPEN).count()
    assert credit_holds_expire(now=timezone.now() + timedelta(hours=1)) == stuck
    holds = list(CreditHold.objects.all())
    entries = {e.hold_id: e for e in LedgerEntry.objects.filter(category=Category.LLM)}
    assert None not in entries, "an llm charge without a hold"
    for hold in holds:
        if hold.status == HoldStatus.SETTLED:
            assert hold.pk in entries and -entries[hold.pk].amount == hold.requested_amount
        else:
            assert hold.status in (HoldStatus.VOIDED, HoldStatus.EXPIRED)
            assert hold.pk not in entries
    assert sum(o.complete for o in outcomes + after) <= sum(h.status == HoldStatus.SETTLED for h in holds)
    assert_books_balance()

    # And the server serves normally: /healthz, both endpoints billed exactly, nothing left open
    serves_normally()


def test_calls_in_flight_when_the_database_is_unreachable_leave_holds_for_the_sweeper(
    own_connection_renewed: None,
    live_asgi: str,
    settings: Any,
    providers: Any,
    make_account: Callable[..., Any],
    bearer: Headers,
    serves_normally: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given paid calls waiting on the provider, each holding credits
    settings.ANTHROPIC_API_KEY = anthropic_key("slow800")
    settings.OPENAI_API_KEY = openai_key("slow800")
    user = make_account(plan="free")
    headers = bearer(user)
    connection.close()  # the test's own goes back to the pool, to be dropped with the app's
    with (
        control_connection() as control,
        ThreadPoolExecutor(UNREACHABLE_CALLS) as pool,
        monkeypatch.context() as outage,
    ):
        futures = [pool.submit(call, live_asgi, headers, number) for number in range(UNREACHABLE_CALLS)]
        wait_for_holds(control, open_at_least=UNREACHABLE_CALLS)

        # When the app loses the database (its connections dropped, new ones refused) before
        # the provider answers
        outage.setattr(connection.pool, "timeout", 1.0)  # waiting for a connection: 1 s, not 10
        with connections_refused(control):
            terminate_app_backends(control)
            outcomes = [future.result() for future in futures]
    # Then each call ends cleanly with the catalogue's 503: JSON, or in the stream it started
    assert [o.problem for o in outcomes if o.problem] == [], summary(outcomes)
    assert {(o.status, o.error and o.error["code"]) for o in outcomes} == {
        (503, "database_unavailable"),
        (200, "database_unavailable"),
    }

    # And their holds, which no call could resolve, are released by the sweeper: nothing charged
    renew_own_connection()
    account = BillingAccount.objects.get(user=user)
    assert account.reserved > 0
    assert CreditHold.objects.filter(status=HoldStatus.OPEN).count() == UNREACHABLE_CALLS
    assert expire_holds.apply().get() == 0  # not before they expire: their calls might still settle
    assert credit_holds_expire(now=timezone.now() + timedelta(hours=1)) == UNREACHABLE_CALLS
    account.refresh_from_db()
    assert (account.balance, account.reserved) == (STARTING_CREDITS_MC, 0)
    assert not LedgerEntry.objects.filter(category=Category.LLM).exists()
    assert_books_balance()

    # And once the database is back, the pool reconnects and the server serves normally
    serves_normally()
