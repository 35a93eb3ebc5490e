"""PostgreSQL is stopped and started again (a restart, a failover) under routed calls and OAuth
refreshes, with the production web command and a real worker on a private server.

* A quick restart while calls are at the provider: their closes meet dead pooled connections,
  try once more on fresh ones, and every call is answered and billed exactly.
* A few seconds down during a burst: every request fails fast with the catalogue's
  `503 database_unavailable` (JSON with Retry-After, or in the stream it had started; never a
  500, an HTML page, a reset connection or a request left hanging on a pool), `/readyz` says the
  database is down, and the refreshes that can't run are retried. Once it is back, the same
  processes serve again on their own (no restart): calls are billed exactly, every refresh
  completes, the holds of calls whose close met the outage are released by the sweeper (nothing
  charged for them) and the books reconcile.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from psycopg import sql

from connections.models import OAuthConnection
from connections.services import REFRESH_TASK
from core.errors import CATALOGUE, DATABASE_RETRY_AFTER_SECONDS, DATABASE_UNAVAILABLE
from credits.pricing import Usage, price_usage
from niyra.celery import app as celery_app
from sandbox import SandboxServer, anthropic_key, openai_key
from tests.connections.test_oauth_helpers import connect, sandbox_integration
from tests.faults.conftest import PROMPT, REPLY_WORDS, Headers
from tests.faults.private_postgres import PostgresServer, private_postgres  # noqa: F401 - fixture
from tests.faults.services import (
    BASE_DIR,
    RedisServer,
    WebServer,
    Worker,
    deployment_env,
    in_process_broker,
    private_redis,  # noqa: F401 - fixture
    start_web,  # noqa: F401 - fixture
    start_workers,  # noqa: F401 - fixture
    wait_for,
)
from tests.faults.test_db_faults import stream_end
from tests.faults.test_worker_faults import make_due
from tests.routing.conftest import STARTING_CREDITS_MC

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# The burst runs on Anthropic's model (platform key: 0.3 s at the provider); the calls at the
# provider during the quick restart on OpenAI's (3 s: longer than a restart takes).
BURST_MODEL, SLOW_MODEL = "claude-haiku-4-5", "gpt-4.1-mini"
BURST_KEY, SLOW_KEY = anthropic_key("slow300"), openai_key("slow3000")
CLIENTS = 6  # callers in the burst, each calling again as soon as it has its answer
CONNECTIONS = 4
DOWN_SECONDS = 8.0  # how long the server stays down: longer than a request waits for a connection
CLIENT_TIMEOUT_SECONDS = 60  # a request still unanswered by then is hung
# Hang bounds (two shared cores), never speed assertions: while the database is down a request
# waits at most one pool timeout (5 s) plus the provider; after the start, the pools reconnect.
ANSWER_BOUND_SECONDS = 20
RECOVERY_BOUND_SECONDS = 30
PRICES = {key: price_usage(key, Usage(6, REPLY_WORDS)) for key in ("claude-haiku-4", "gpt-4.1-mini")}


@dataclass
class Outcome:
    path: str
    stream: bool
    started: float
    ended: float = 0.0
    status: int | None = None
    error: dict[str, Any] | None = None  # a catalogue error body, whether JSON or in the stream
    retry_after: str | None = None
    complete: bool = False  # a 200 that ran to its end
    problem: str = ""  # anything that is not a clean answer

    @property
    def code(self) -> str | None:
        return (self.error or {}).get("code")

    @property
    def unavailable(self) -> bool:
        """The catalogue's database_unavailable: a 503 with Retry-After, or in a started stream."""
        if self.code != DATABASE_UNAVAILABLE.code:
            return False
        return self.status == 200 or (self.status == 503 and self.retry_after == str(DATABASE_RETRY_AFTER_SECONDS))


def call(base_url: str, headers: dict[str, str], number: int, model: str = BURST_MODEL) -> Outcome:
    """One routed call on credits: /v1/chat/completions (the gateway's own app) or
    /api/llm/messages (a Django view, the same gateway in process), JSON or streamed."""
    openai_style, stream = number % 2 == 1, number % 4 >= 2
    path = "/v1/chat/completions" if openai_style else "/api/llm/messages"
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 50, "stream": stream}
    outcome = Outcome(path=path, stream=stream, started=time.monotonic())
    try:
        with httpx2.Client(timeout=CLIENT_TIMEOUT_SECONDS) as http:
            response = http.post(base_url + path, json=body, headers=headers)
    except httpx2.HTTPError as exc:
        outcome.problem = f"no clean response: {type(exc).__name__}: {exc}"
        return outcome
    finally:
        outcome.ended = time.monotonic()
    outcome.status, content_type = response.status_code, response.headers.get("content-type", "")
    outcome.retry_after = response.headers.get("retry-after")
    if content_type.startswith("text/event-stream") and response.status_code == 200:
        outcome.error, outcome.complete = stream_end(response.text, openai_style=openai_style)
        if not outcome.complete and outcome.error is None:
            outcome.problem = f"a stream that neither finished nor said why: {response.text[-200:]!r}"
    elif content_type == "application/json":
        if response.status_code == 200:
            outcome.complete = True
        else:
            outcome.error = response.json()
    else:
        outcome.problem = f"HTTP {response.status_code} {content_type}: {response.text[:200]!r}"
    if outcome.error is not None and outcome.code not in CATALOGUE:
        outcome.problem = f"HTTP {response.status_code}, not a catalogue error: {outcome.error}"
    return outcome


def summary(outcomes: list[Outcome], at: float = 0.0) -> str:
    """How many ended how; with `at`, each call's start and duration in seconds from `at`."""
    counts = Counter(o.problem[:80] or ("served" if o.complete else f"{o.status} {o.code}") for o in outcomes)
    text = ", ".join(f"{n} x {what}" for what, n in counts.most_common())
    if at:
        text += "".join(
            f"\n{o.started - at:+6.2f} {o.ended - o.started:5.2f} {o.path} stream={o.stream} {o.status} {o.code}"
            for o in sorted(outcomes, key=lambda o: o.started)
        )
    return text


@dataclass
class Burst:
    """Callers calling in a loop until told to stop; what each call got."""

    base_url: str
    headers: list[dict[str, str]]
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, first: int) -> None:
        number = first
        while not self.stop.is_set():
            outcome = call(self.base_url, self.headers[number % len(self.headers)], number)
            with self.lock:
                self.outcomes.append(outcome)
            number += CLIENTS

    def served_since(self, at: float) -> int:
        with self.lock:
            return sum(1 for o in self.outcomes if o.complete and o.started > at)


def query(server: PostgresServer, statement: str | sql.Composed, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from the private server (the test's own ORM is on the test database)."""
    with server.connect() as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def open_holds(server: PostgresServer) -> int:
    return int(query(server, "SELECT count(*) FROM credits_credithold WHERE status = 'open'")[0][0])


def refreshed(server: PostgresServer, ids: list[int]) -> bool:
    rows = query(
        server,
        sql.SQL(
            "SELECT count(*) FROM {} WHERE id = ANY(%s)"
            " AND last_refreshed_at IS NOT NULL AND status = 'active' AND consecutive_failures = 0"
        ).format(sql.Identifier(OAuthConnection._meta.db_table)),
        ids,
    )
    return rows[0][0] == len(ids)


def refresh(ids: list[int]) -> None:
    for connection_id in ids:
        celery_app.send_task(REFRESH_TASK, kwargs={"connection_id": connection_id})


def readyz(base_url: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = httpx2.get(base_url + "/readyz", timeout=CLIENT_TIMEOUT_SECONDS)
    return response.status_code, response.json(), time.monotonic() - started


def test_postgres_restarts_under_calls_and_refreshes(
    private_postgres: PostgresServer,  # noqa: F811
    private_redis: RedisServer,  # noqa: F811
    start_web: Callable[..., WebServer],  # noqa: F811
    start_workers: Callable[..., list[Worker]],  # noqa: F811
    sandbox: SandboxServer,
    settings: Any,
    make_account: Callable[..., Any],
    bearer: Headers,
) -> None:
    # Given users paying in credits, and OAuth connections due for a refresh
    settings.OAUTH_INTEGRATIONS = {"gmail": sandbox_integration(sandbox, name="gmail")}
    payers = [make_account(plan="free") for _ in range(4)]
    headers = [bearer(user) for user in payers]
    connections = [connect(make_account(plan="pro", credits_mc=0), "gmail") for _ in range(CONNECTIONS)]
    for connection in connections:
        make_due(connection)
    before_outage, during_outage = [c.pk for c in connections[:2]], [c.pk for c in connections[2:]]
    # all of it in a private PostgreSQL server, which the test may stop
    private_postgres.copy_test_database()
    # and the production web command and a worker on it, with Django's pool on, as in production
    env = deployment_env(
        redis_url=private_redis.url(),
        sandbox=sandbox,
        DATABASE_URL=private_postgres.url(),
        DB_POOL="True",
        ANTHROPIC_API_KEY=BURST_KEY,
        OPENAI_API_KEY=SLOW_KEY,
    )
    with ThreadPoolExecutor(1) as starter:
        web_started = starter.submit(start_web, env, "web")
        (worker,) = start_workers(env, "worker")
        web = web_started.result()

    # When PostgreSQL restarts (stop, start) while calls hold credits at the provider
    with ThreadPoolExecutor(len(payers)) as pool:
        futures = [pool.submit(call, web.url, headers[n], n, SLOW_MODEL) for n in range(len(payers))]
        wait_for(lambda: open_holds(private_postgres) == len(payers), timeout=60, what="every call at the provider")
        private_postgres.stop()
        private_postgres.start()
        at_provider = [future.result() for future in futures]

    # Then every one of them was answered and billed exactly: a close that met a dead connection
    # went through on a fresh one
    assert all(o.complete for o in at_provider), summary(at_provider)
    assert "its close met a dead connection; trying once more" in web.log()
    balances = dict(
        query(
            private_postgres,
            "SELECT user_id, balance FROM credits_billingaccount WHERE user_id = ANY(%s)",
            [u.pk for u in payers],
        )
    )
    assert {balances[u.pk] for u in payers} == {STARTING_CREDITS_MC - PRICES["gpt-4.1-mini"]}
    assert open_holds(private_postgres) == 0

    # When it stops for a few seconds during a burst of calls, with refreshes queued before it
    # (done before it stops: a token request at the provider at that very moment can't store the
    # token the provider rotated, tests/faults/test_worker_faults.py) and while it is down
    burst = Burst(web.url, headers)
    with in_process_broker(private_redis.url()), ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(burst.client, first) for first in range(CLIENTS)]
        try:
            wait_for(lambda: burst.served_since(0) >= CLIENTS, timeout=60, what="the burst to be served")
            refresh(before_outage)
            wait_for(lambda: refreshed(private_postgres, before_outage), timeout=30, what="the refreshes")
            down_at = time.monotonic()
            private_postgres.stop()
            stopped_at = time.monotonic()
            refresh(during_outage)
            ready_status, ready_body, ready_seconds = readyz(web.url)
            time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - stopped_at)))
            # and starts again
            private_postgres.start()
            up_at = time.monotonic()
            wait_for(
                lambda: burst.served_since(up_at) >= CLIENTS, timeout=RECOVERY_BOUND_SECONDS, what="calls served again"
            )
        finally:
            burst.stop.set()
            for future in clients:
                future.result()
    outcomes = burst.outcomes
    what_happened = (
        summary(outcomes, down_at) + f"\nstopped at {stopped_at - down_at:+.2f}, started at {up_at - down_at:+.2f}"
    )

    # Then every request ended cleanly: served, or the catalogue's database_unavailable (JSON
    # with Retry-After, or in the stream it had started), each within the hang bound
    assert [o.problem for o in outcomes if o.problem] == [], what_happened
    assert [o for o in outcomes if not (o.complete or o.unavailable)] == [], what_happened
    assert max(o.ended - o.started for o in outcomes) < ANSWER_BOUND_SECONDS, what_happened
    # and every request answered while it was down was told so, each caller at least once (no
    # caller was left hanging on it); one made shortly before it came back may have been served
    answered_down = [o for o in outcomes if stopped_at < o.ended < up_at]
    assert len(answered_down) >= CLIENTS and all(o.unavailable for o in answered_down), what_happened
    # and /readyz said the database (only it) was down
    assert ready_status == 503 and ready_seconds < ANSWER_BOUND_SECONDS
    assert ready_body["down"] == ["database"]

    # And the same processes serve again, unrestarted: /readyz is ok
    assert readyz(web.url)[0] == 200
    assert web.log().count("Booting worker") == 1 and worker.process.poll() is None, web.log()[-3000:]
    # and every refresh completed: those queued while it was down were retried
    wait_for(lambda: refreshed(private_postgres, during_outage), timeout=RECOVERY_BOUND_SECONDS, what="the retries")

    # And no money moved half-way: a hold whose close met the outage stays open for the sweeper,
    # which releases it once it expires (nothing charged); every settled hold was billed exactly
    # its call's price, with its one entry
    stranded = open_holds(private_postgres)
    assert stranded <= sum(o.unavailable for o in outcomes), what_happened
    query(private_postgres, "UPDATE credits_credithold SET expires_at = now() - interval '1 s' WHERE status = 'open'")
    with in_process_broker(private_redis.url()):
        celery_app.send_task("credits.tasks.expire_holds")
    wait_for(lambda: open_holds(private_postgres) == 0, timeout=30, what="the sweeper")
    settled = query(
        private_postgres,
        "SELECT h.price_key, h.requested_amount, -e.amount FROM credits_credithold h"
        " LEFT JOIN credits_ledgerentry e ON e.hold_id = h.id WHERE h.status = 'settled'",
    )
    assert [row for row in settled if row[1:] != (PRICES[row[0]], PRICES[row[0]])] == []
    assert len(settled) >= len(at_provider) + sum(o.complete for o in outcomes)
    unheld = query(
        private_postgres, "SELECT count(*) FROM credits_ledgerentry WHERE category = 'llm' AND hold_id IS NULL"
    )
    assert unheld == [(0,)]
    resolved = query(
        private_postgres,
        "SELECT count(*) FROM credits_credithold h JOIN credits_ledgerentry e ON e.hold_id = h.id"
        " WHERE h.status <> 'settled'",
    )
    assert resolved == [(0,)]
    # and the books reconcile (the command a deploy runs, on the private server)
    reconcile = subprocess.run(
        [sys.executable, "manage.py", "reconcile_ledger"], env=env, cwd=BASE_DIR, capture_output=True, text=True
    )
    assert reconcile.returncode == 0 and "no mismatches" in reconcile.stdout, reconcile.stdout + reconcile.stderr
