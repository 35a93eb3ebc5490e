"""Load: bounded mixed traffic against the production web command, then the ledger check.

Runs gunicorn + uvicorn workers (`gunicorn.conf.py`, DEBUG off, PostgreSQL, Redis) in front of
the provider sandbox, started with the environment `benchmarks/routing.py` gives them, and
drives a closed loop of mixed requests (aiohttp; the openai SDK's own CPU would be the
bottleneck on this machine). Each request is one of these kinds, drawn by weight:

* `credits_call`, `credits_stream`: routed calls paid in credits (platform key: hold, provider
  call, settle), JSON and SSE;
* `byok_call`, `byok_stream`: routed calls on the user's own key, JSON and SSE;
  every routed kind alternates between the OpenAI-compatible endpoint (gpt-4.1-mini) and the
  native one (claude-haiku-4-5), so both provider adapters run;
* `key_test`: `POST /api/keys/<provider>/test`, a one-token validation call to the sandbox;
* `ledger`, `balance`: `GET /api/credits/ledger?limit=20` and `GET /api/credits/balance`.

Phases: a short warm-up; a ramp of short closed-loop steps at rising concurrency, where the knee
is the lowest concurrency whose throughput is within 10% of the best step's (the ramp stops
after two steps without a 10% gain, or at the first 5xx or transport error); then `--duration`
seconds (default 60) at the knee. `--concurrency N` skips the ramp.

Soak (issue 16): `--soak-minutes [N]` (15 without N) runs the main phase for N minutes as an
open loop, new requests arriving at a fixed rate whatever the server's speed: half the
throughput the ramp measured at the knee (or `--rate R`, which skips the ramp). The Procfile's
Celery worker and beat run beside the web server on the run's Redis db, with work to do: OAuth
connections on the sandbox whose tokens live 120 s, refreshed by 30 s ticks, and a health probe
of every saved key each 5 minutes (`soak_env`).

Throughout the main phase `benchmarks/soak.py` samples, every few seconds, each process's RSS
and open fds, the run's database connections by process group, the Celery queue, and the
latency and throughput of the interval; it fits a slope to each series after a warm-up and
judges which should be flat (its docstring says how).

Checks (exit status 1 if any fails): `reconcile_ledger` clean; no 5xx, no transport error, and
every answer as expected (the key source asked for, a complete stream, the key reported valid,
no 4xx); the database agrees with what the client saw: one `ok` routed-call row per answered
call by key source, one settled charge per credits call, no open hold, one audit row per key
test; the flatness rules hold (soak runs: more of them); no Celery task raised.

Key tests keep the production throttle (`byok_test`, 30 per user per hour): they are spread
over the BYOK users, none tested more than 30 times in an hour, and the run's Redis db is
cleared of earlier throttle history first (a fresh database hands out the same user ids again).

The last line printed is `LOAD_RESULT <json>`, read by `tests/faults/test_load.py`.

    .venv/bin/python benchmarks/load.py                                  # ramp, then 60 s at the knee
    .venv/bin/python benchmarks/load.py --duration 20 --concurrency 16   # no ramp
    .venv/bin/python benchmarks/load.py --soak-minutes                   # ramp, then a 15-minute soak
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import functools
import itertools
import json
import math
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import soak  # noqa: E402
from benchmarks.routing import free_port, peak_rss_mb, reconcile, wait_http  # noqa: E402

MIX = {
    "credits_call": 20,
    "credits_stream": 15,
    "byok_call": 20,
    "byok_stream": 15,
    "key_test": 5,
    "ledger": 15,
    "balance": 10,
}
ROUTED = {  # kind -> (key source the answer must name, stream)
    "credits_call": ("platform", False),
    "credits_stream": ("platform", True),
    "byok_call": ("byok", False),
    "byok_stream": ("byok", True),
}
ENDPOINTS = (("/v1/chat/completions", "gpt-4.1-mini"), ("/api/llm/messages", "claude-haiku-4-5"))
PROMPT = [{"role": "user", "content": "Say hello to the load test"}]
KEY_TESTS_PER_USER = 30  # the production `byok_test` rate is 30/hour per user
KEY_TEST_WINDOW = 3600 + 120  # its hour, and a margin: the server's window starts when it counts
REQUEST_TIMEOUT = 30.0
MAX_IN_FLIGHT = 1000  # open loop: past this the server is not keeping up; stop adding to it
SOAK_CLIENT_ID = "load-soak-ttl120"  # sandbox words: access tokens live 120 s
SOAK_TICK_SECONDS = 30  # OAuth refresh and key-health ticks during a soak (production: 300)
SOAK_KEY_HEALTH_SECONDS = 300  # each saved key probed every 5 minutes (production: a day)
DB_NAME_RULE = re.compile(r"niyra_load_[a-z0-9_]{1,40}")  # the run drops this database: never another one


# --- the stack ---------------------------------------------------------------------------------


def database_url(server: str, database: str) -> str:
    """``server`` (a PostgreSQL URL naming no database: host and port, or ``?host=<socket dir>``)
    with ``database`` as its path."""
    return urlunsplit(urlsplit(server)._replace(path=f"/{database}"))


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGTERM it if this process dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stack_env(args: argparse.Namespace, *, sandbox_url: str, web_port: int) -> dict[str, str]:
    """The environment benchmarks/routing.py gives the production web command, with this run's
    database and Redis db, and the production database pool size."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "NIYRA_", "DATABASE_", "REDIS_"))},
        "DJANGO_SETTINGS_MODULE": "niyra.settings.production",
        "NIYRA_READ_DOTENV": "0",
        "DEBUG": "False",
        "SECURE_SSL_REDIRECT": "False",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "NIYRA_ENCRYPTION_KEYS": "load:" + base64.b64encode(os.urandom(32)).decode(),
        "DATABASE_URL": database_url(args.postgres, args.database),
        "REDIS_URL": args.redis_url,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ANTHROPIC_API_KEY": "sk-ant-platform-load",
        "OPENAI_API_KEY": "sk-proj-platform-load",
        "EMAIL_URL": "consolemail://",
        "NIYRA_PUBLIC_URL": "http://127.0.0.1",
        "ANTHROPIC_BASE_URL": f"{sandbox_url}/anthropic",
        "OPENAI_BASE_URL": f"{sandbox_url}/openai/v1",
        "LOG_LEVEL": "WARNING",
        "PORT": str(web_port),
        "WEB_CONCURRENCY": str(args.workers),
        **(soak_env(args, sandbox_url) if args.soak_minutes else {}),
    }


def soak_env(args: argparse.Namespace, sandbox_url: str) -> dict[str, str]:
    """Work for the worker and beat while the soak runs: an OAuth integration on the sandbox whose
    access tokens live 120 s, refresh ticks every 30 s (each connection refreshed about once a
    minute), and a health probe of every saved key each 5 minutes, spread evenly."""
    keys_per_provider_per_tick = math.ceil(args.byok_users * SOAK_TICK_SECONDS / SOAK_KEY_HEALTH_SECONDS) + 1
    return {
        "OAUTH_INTEGRATION_NAMES": "soak",
        "OAUTH_SOAK_CLIENT_ID": SOAK_CLIENT_ID,
        "OAUTH_SOAK_CLIENT_SECRET": f"secret-{SOAK_CLIENT_ID}",  # the sandbox's rule
        "OAUTH_SOAK_AUTHORIZE_URL": f"{sandbox_url}/oauth/authorize",
        "OAUTH_SOAK_TOKEN_URL": f"{sandbox_url}/oauth/token",
        "OAUTH_SOAK_REVOKE_URL": f"{sandbox_url}/oauth/revoke",
        "OAUTH_REFRESH_INTERVAL_SECONDS": str(SOAK_TICK_SECONDS),
        "OAUTH_REFRESH_MARGIN_SECONDS": "60",
        "BYOK_HEALTH_TICK_SECONDS": str(SOAK_TICK_SECONDS),
        "BYOK_HEALTH_INTERVAL_SECONDS": str(SOAK_KEY_HEALTH_SECONDS),
        "BYOK_HEALTH_MAX_PER_PROVIDER_PER_TICK": str(keys_per_provider_per_tick),
    }


def create_database(args: argparse.Namespace) -> None:
    with psycopg.connect(database_url(args.postgres, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {args.database}")


def setup_database(args: argparse.Namespace, env: dict[str, str], sandbox_url: str) -> dict[str, list[str]]:
    """Migrate; then credits users (free plan) and BYOK users (pro plan, an OpenAI and an
    Anthropic key each, validated by the sandbox), and for a soak the first credits users' OAuth
    connections (`--connections`), all through the services. One process, and the sandbox boots
    meanwhile: on a busy 2-CPU machine each Django start-up costs seconds. Returns the users' API
    tokens by path."""
    script = f"""
import secrets, time, urllib.request
from django.core.management import call_command
from accounts.services import api_token_create, user_create
from byok.services import provider_key_save
from credits.services.accounts import billing_plan_set
from credits.services.ledger import credit_grant
call_command("migrate", verbosity=0)
for _ in range(600):
    try:
        urllib.request.urlopen("{sandbox_url}/_sandbox/log", timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
for path, count in (("credits", {args.credits_users}), ("byok", {args.byok_users})):
    for n in range(count):
        user = user_create(email=f"{{path}}-{{n}}@load.local", password=None)
        billing_plan_set(user=user, plan="free" if path == "credits" else "pro")
        credit_grant(user=user, amount=10**12, reason="load test", idempotency_key="load")
        if path == "byok":
            provider_key_save(user=user, provider="openai", key="sk-proj-load-" + secrets.token_hex(8))
            provider_key_save(user=user, provider="anthropic", key="sk-ant-api03-load-" + secrets.token_hex(8))
        print(path, api_token_create(user=user, name="load").plaintext)
"""
    if args.connections:  # soak: OAuth connections for the worker to refresh, through the services
        script += f"""
import urllib.error
from urllib.parse import parse_qs, urlsplit
from accounts.models import User
from connections.services import connection_connect_complete, connection_connect_start

class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the sandbox approves at once; its redirect carries the code

for n in range({args.connections}):
    user = User.objects.get(email=f"credits-{{n}}@load.local")
    url = connection_connect_start(user=user, integration="soak", redirect_uri="http://127.0.0.1/oauth/callback/soak")
    try:
        urllib.request.build_opener(Stay).open(url, timeout=10)
    except urllib.error.HTTPError as redirect:
        query = parse_qs(urlsplit(redirect.headers["Location"]).query)
    connection_connect_complete(user=user, integration="soak", state=query["state"][0], code=query["code"][0])
    print("connection", n)
"""
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v0", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    tokens: dict[str, list[str]] = {"credits": [], "byok": []}
    connected = sum(line.startswith("connection ") for line in result.stdout.splitlines())
    for line in result.stdout.splitlines():
        path, _, token = line.partition(" ")
        if path in tokens and token.startswith("niy_"):
            tokens[path].append(token)
    counts = (len(tokens["credits"]), len(tokens["byok"]), connected)
    if result.returncode or counts != (args.credits_users, args.byok_users, args.connections):
        raise RuntimeError(f"setup failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return tokens


def clear_throttle_history(redis_url: str) -> int:
    """Forget key-check throttle counts (`byok.throttle`'s keys): user ids repeat in a fresh
    database, so a run must not inherit the last one's saves and tests."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="*byok-probes:*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children (the gunicorn master and its workers)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ticks = 0
    for each in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the traffic -------------------------------------------------------------------------------


@dataclass
class Tally:
    """One phase: latencies of the requests answered as expected, by kind; every other outcome
    by kind and `status:code` (`-:transport:<error>` when there was no HTTP answer)."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    wall: float = 0.0

    def ok(self, kind: str) -> int:
        return len(self.latencies.get(kind, []))

    def answered(self) -> int:
        return sum(len(values) for values in self.latencies.values())

    def requests(self, kind: str | None = None) -> int:
        failed = sum(n for (k, _), n in self.failures.items() if kind is None or k == kind)
        answered = sum(len(v) for k, v in self.latencies.items() if kind is None or k == kind)
        return answered + failed

    def absorb(self, other: Tally) -> None:
        for kind, values in other.latencies.items():
            self.latencies[kind].extend(values)
        self.failures.update(other.failures)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def _code(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return "-"
    return str(body.get("code", "-")) if isinstance(body, dict) else "-"


def check_json(path: str, text: str, source: str, header: str | None) -> str:
    """A reply, and the key source asked for (on /v1, the gateway says it in a header: the body
    is the provider's)."""
    body = json.loads(text)
    if path.startswith("/v1/"):
        routing, content = {"key_source": header}, body["choices"][0]["message"]["content"]
    else:
        routing, content = body.get("routing") or {}, body.get("content")
    if routing.get("key_source") != source:
        return f"check:key_source={routing.get('key_source')}"
    return "ok" if content else "check:empty_reply"


def check_stream(path: str, text: str, source: str, header: str | None) -> str:
    """A complete stream, no error event, and the key source asked for (header and final event)."""
    if header != source:
        return f"check:key_source_header={header}"
    if path.startswith("/v1/"):
        datas = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        if not datas or datas[-1] != "[DONE]":
            return "check:stream_incomplete"
        chunks = [json.loads(d) for d in datas[:-1]]
        if any("error" in chunk for chunk in chunks):
            return "check:stream_error=" + next(str(c["error"].get("code")) for c in chunks if "error" in c)
        final = {"key_source": header}
    else:
        events: list[tuple[str, dict[str, Any]]] = []
        for block in text.split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in lines:
                events.append((lines["event"], json.loads(lines.get("data", "{}"))))
        if any(name == "error" for name, _ in events):
            return "check:stream_error=" + next(str(data.get("code")) for name, data in events if name == "error")
        if not events or events[-1][0] != "done":
            return "check:stream_incomplete"
        final = events[-1][1].get("routing") or {}
    if final.get("key_source") != source:
        return f"check:key_source={final.get('key_source')}"
    return "ok"


class Traffic:
    """Draws each request's kind by weight and sends it as the next user of the right kind."""

    def __init__(self, session: aiohttp.ClientSession, base: str, tokens: dict[str, list[str]], seed: int) -> None:
        self.session, self.base = session, base
        self.rng = random.Random(seed)
        self.kinds, self.weights = list(MIX), list(MIX.values())
        self.credits = itertools.cycle(tokens["credits"])
        self.byok = itertools.cycle(tokens["byok"])
        self.any_user = itertools.cycle(tokens["credits"] + tokens["byok"])
        self.key_testers = deque(self.rng.sample(tokens["byok"], len(tokens["byok"])))
        self.key_tests_sent: dict[str, deque[float]] = {token: deque() for token in tokens["byok"]}
        self.key_tests_skipped = 0
        self.window, self.in_flight = soak.Window(), 0  # read by the sampler
        self.routed_turn, self.key_test_turn = itertools.count(), itertools.count()
        self.endpoints: Counter[str] = Counter()  # routed requests sent, by path, whole run
        self.senders: dict[str, Callable[[str], Any]] = {
            **dict.fromkeys(ROUTED, self.routed),
            "ledger": self.ledger,
            "balance": self.balance,
        }

    def take_window(self) -> soak.Window:
        window, self.window = self.window, soak.Window()
        return window

    def _key_tester(self) -> str | None:
        """The next BYOK user with a key test left in the throttle's hour (by this client's clock,
        with a margin for the server's), or None."""
        now = time.monotonic()
        for _ in range(len(self.key_testers)):
            token = self.key_testers[0]
            self.key_testers.rotate(-1)
            sent = self.key_tests_sent[token]
            while sent and now - sent[0] > KEY_TEST_WINDOW:
                sent.popleft()
            if len(sent) < KEY_TESTS_PER_USER:
                sent.append(now)
                return token
        return None

    async def one(self, tally: Tally, *, scheduled: float | None = None) -> None:
        """One request. Its latency runs from `scheduled` when given (an open loop's arrival
        time: a request the client sent late still counts its wait)."""
        kind = self.rng.choices(self.kinds, self.weights)[0]
        tester = self._key_tester() if kind == "key_test" else None
        if kind == "key_test" and tester is None:
            kind, self.key_tests_skipped = "balance", self.key_tests_skipped + 1
        send = functools.partial(self.key_test, token=tester) if tester else self.senders[kind]
        started = time.perf_counter() if scheduled is None else scheduled
        self.in_flight += 1
        try:
            status, outcome = await send(kind)
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, outcome = None, f"transport:{type(exc).__name__}"
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # an answer of the wrong shape
            status, outcome = 200, f"check:malformed:{type(exc).__name__}"
        finally:
            self.in_flight -= 1
        if outcome == "ok":
            latency = time.perf_counter() - started
            tally.latencies[kind].append(latency)
            self.window.latencies.append(latency)
        else:
            tally.failures[(kind, f"{status if status is not None else '-'}:{outcome}")] += 1
            self.window.failed += 1

    def _auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def routed(self, kind: str) -> tuple[int, str]:
        source, stream = ROUTED[kind]
        token = next(self.credits if source == "platform" else self.byok)
        path, model = ENDPOINTS[next(self.routed_turn) % len(ENDPOINTS)]
        self.endpoints[path] += 1
        body: dict[str, Any] = {"model": model, "messages": PROMPT, "max_tokens": 16, "stream": stream}
        if stream and path.startswith("/v1/"):
            body["stream_options"] = {"include_usage": True}
        async with self.session.post(self.base + path, json=body, headers=self._auth(token)) as response:
            text = await response.text()
            if response.status != 200:
                return response.status, _code(text)
            if stream:
                return 200, check_stream(path, text, source, response.headers.get("X-Niyra-Key-Source"))
            return 200, check_json(path, text, source, response.headers.get("X-Niyra-Key-Source"))

    async def key_test(self, kind: str, *, token: str) -> tuple[int, str]:
        provider = ("openai", "anthropic")[next(self.key_test_turn) % 2]
        async with self.session.post(f"{self.base}/api/keys/{provider}/test", headers=self._auth(token)) as response:
            text = await response.text()
            if response.status != 200:
                return response.status, _code(text)
            status = json.loads(text).get("status")
            return 200, "ok" if status == "valid" else f"check:key_status={status}"

    async def ledger(self, kind: str) -> tuple[int, str]:
        url = f"{self.base}/api/credits/ledger?limit=20"
        async with self.session.get(url, headers=self._auth(next(self.credits))) as response:
            text = await response.text()
            if response.status != 200:
                return response.status, _code(text)
            results = json.loads(text)["results"]
            return 200, "ok" if isinstance(results, list) and results else "check:empty_ledger"

    async def balance(self, kind: str) -> tuple[int, str]:
        url = f"{self.base}/api/credits/balance"
        async with self.session.get(url, headers=self._auth(next(self.any_user))) as response:
            text = await response.text()
            if response.status != 200:
                return response.status, _code(text)
            body = json.loads(text)
            good = isinstance(body["available"], int) and body["available"] >= 0 and body["unit"] == "millicredit"
            return 200, "ok" if good else "check:balance"


async def run_phase(traffic: Traffic, *, concurrency: int, seconds: float) -> Tally:
    """A closed loop: `concurrency` clients, each sending its next request when the last is answered."""
    tally = Tally()
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            await traffic.one(tally)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    tally.wall = time.perf_counter() - started
    return tally


async def run_open_loop(traffic: Traffic, *, rate: float, seconds: float) -> Tally:
    """An open loop: a request every 1/`rate` seconds, whether or not the earlier ones were
    answered (so a slower server shows as latency and requests in flight, not as a lower rate),
    then the ones still in flight are awaited (each is bounded by its timeout). Past
    `MAX_IN_FLIGHT` requests waiting, an arrival is counted as failed instead of sent."""
    tally = Tally()
    pending: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    for n in itertools.count():
        due = started + n / rate
        if due - started >= seconds:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if traffic.in_flight >= MAX_IN_FLIGHT:
            tally.failures[("-", "-:client:too_many_in_flight")] += 1
            traffic.window.failed += 1
            continue
        task = asyncio.create_task(traffic.one(tally, scheduled=due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    tally.wall = time.perf_counter() - started
    return tally


def severe(tally: Tally) -> int:
    """5xx answers and transport errors: what stops the ramp."""
    return sum(n for (_, key), n in tally.failures.items() if key.startswith(("5", "-:")))


def find_knee(steps: list[tuple[int, Tally]]) -> int:
    """The lowest concurrency whose throughput (answered as expected) is within 10% of the best
    clean step's: past it, more clients only queue."""
    rates = {concurrency: tally.answered() / tally.wall for concurrency, tally in steps if not severe(tally)}
    if not rates:
        return steps[0][0]
    best = max(rates.values())
    return min(concurrency for concurrency, rate in rates.items() if rate >= 0.9 * best)


async def ramp(traffic: Traffic, args: argparse.Namespace, everything: Tally) -> tuple[int, list[tuple[int, Tally]]]:
    """Short steps at rising concurrency; stops after two steps without a 10% gain, or at the
    first 5xx or transport error. Returns the knee and the steps."""
    print("\n## Ramp (closed loop, mixed traffic)")
    print("| concurrency | seconds | requests | ok req/s | routed p50 ms | routed p95 ms | 5xx + transport |")
    print("|---|---|---|---|---|---|---|")
    steps: list[tuple[int, Tally]] = []
    best, flat = 0.0, 0
    for concurrency in args.ramp:
        tally = await run_phase(traffic, concurrency=concurrency, seconds=args.step_seconds)
        everything.absorb(tally)
        steps.append((concurrency, tally))
        rate = tally.answered() / tally.wall
        routed = [value for kind in ROUTED for value in tally.latencies.get(kind, [])]
        print(
            f"| {concurrency} | {tally.wall:.1f} | {tally.requests()} | {rate:.0f} "
            f"| {pct(routed, 50):.0f} | {pct(routed, 95):.0f} | {severe(tally)} |"
        )
        if severe(tally):
            break
        flat = flat + 1 if rate < 1.1 * best else 0
        best = max(best, rate)
        if flat >= 2:
            break
    knee = find_knee(steps)
    print(f"\nknee: concurrency {knee}")
    return knee, steps


def backend_ports(args: argparse.Namespace) -> dict[str, int]:
    """The TCP ports of PostgreSQL (unless reached through a Unix socket) and Redis, so the
    sampler can tell a process's sockets to them from the rest."""
    postgres, cache = urlsplit(args.postgres), urlsplit(args.redis_url)
    ports = {"redis": cache.port or 6379}
    if postgres.hostname:
        ports["postgres"] = postgres.port or 5432
    return ports


async def drive(
    args: argparse.Namespace, base: str, tokens: dict[str, list[str]], processes: dict[str, int]
) -> dict[str, Any]:
    """Warm-up, the ramp (unless a concurrency or a rate is given), then the main phase with the
    sampler running beside it: closed loop at the knee, or (soak) open loop at half the knee's
    throughput."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        traffic = Traffic(session, base, tokens, args.seed)
        everything = Tally()
        everything.absorb(await run_phase(traffic, concurrency=4, seconds=args.warmup))
        knee, steps = (args.concurrency, []) if args.concurrency or args.rate else await ramp(traffic, args, everything)
        knee_rate = next((t.answered() / t.wall for c, t in steps if c == knee), None)
        rate = args.rate or (knee_rate / 2 if args.soak_minutes and knee_rate else None)
        if rate:
            print(f"open loop at {rate:.1f} req/s" + (f" (half of {knee_rate:.1f})" if not args.rate else ""))

        sampler = soak.Sampler(
            processes=processes,
            dsn=database_url(args.postgres, args.database),
            database=args.database,
            backends=backend_ports(args),
            redis_url=args.redis_url if "worker" in processes else None,
            take_window=traffic.take_window,
            in_flight=lambda: traffic.in_flight,
            interval=args.sample_seconds,
        )
        traffic.take_window()  # the first interval starts with the sampler
        sampling = asyncio.create_task(sampler.run())
        cpu_before, client_before = cpu_seconds(processes["web"]), time.process_time()
        if rate:
            main = await run_open_loop(traffic, rate=rate, seconds=args.main_seconds)
        else:
            main = await run_phase(traffic, concurrency=knee, seconds=args.main_seconds)
        web_cpu, client_cpu = cpu_seconds(processes["web"]) - cpu_before, time.process_time() - client_before
        sampler.stop()
        samples = await sampling
        everything.absorb(main)
    return {
        "main": main,
        "everything": everything,
        "knee": knee,
        "knee_rate": knee_rate,
        "rate": rate,
        "samples": samples,
        "processes": processes,
        "steps": steps,
        "web_cpu": web_cpu,
        "client_cpu": client_cpu,
        "key_tests_skipped": traffic.key_tests_skipped,
        "endpoints": dict(traffic.endpoints),
    }


# --- the checks and the report -----------------------------------------------------------------


def database_check(args: argparse.Namespace, everything: Tally) -> tuple[bool, dict[str, dict[str, int]]]:
    """What the database recorded against what the client was answered, over the whole run."""
    want = {
        "routed calls ok, platform": everything.ok("credits_call") + everything.ok("credits_stream"),
        "routed calls ok, byok": everything.ok("byok_call") + everything.ok("byok_stream"),
        "routed calls not ok": sum(n for (kind, _), n in everything.failures.items() if kind in ROUTED),
        "LLM charges (settled holds)": everything.ok("credits_call") + everything.ok("credits_stream"),
        "open holds": 0,
        "key tests audited": everything.ok("key_test")
        + sum(n for (kind, key), n in everything.failures.items() if kind == "key_test" and key.startswith("200:")),
    }
    queries = {
        "routed calls ok, platform": "SELECT count(*) FROM routing_routedcall WHERE outcome = 'ok' "
        "AND key_source = 'platform'",
        "routed calls ok, byok": "SELECT count(*) FROM routing_routedcall WHERE outcome = 'ok' AND key_source = 'byok'",
        "routed calls not ok": "SELECT count(*) FROM routing_routedcall WHERE outcome <> 'ok'",
        "LLM charges (settled holds)": "SELECT count(*) FROM credits_ledgerentry WHERE category = 'llm' "
        "AND hold_id IS NOT NULL",
        "open holds": "SELECT count(*) FROM credits_credithold WHERE status = 'open'",
        "key tests audited": "SELECT count(*) FROM accounts_auditevent WHERE event = 'provider_key.tested'",
    }
    got: dict[str, int] = {}
    deadline = time.monotonic() + 10  # a stream's last rows may land just after its last byte
    with psycopg.connect(database_url(args.postgres, args.database), autocommit=True) as conn:
        while True:
            for name, sql in queries.items():
                row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
                got[name] = int(row[0]) if row else -1
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return got == want, {name: {"client": want[name], "database": got[name]} for name in want}


def report(args: argparse.Namespace, run: dict[str, Any], *, peak_mb: float, workers: int) -> dict[str, Any]:
    main: Tally = run["main"]
    if run["rate"]:
        half = (
            f", half the knee's {run['knee_rate']:.1f} req/s at concurrency {run['knee']}" if run["knee_rate"] else ""
        )
        print(f"\n## Main phase: {args.main_seconds / 60:.1f} min, open loop at {run['rate']:.1f} req/s{half}")
    else:
        print(f"\n## Main phase: {args.main_seconds:.0f} s at concurrency {run['knee']} (closed loop)")
    print("| kind | requests | req/s | errors | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    kinds: dict[str, dict[str, Any]] = {}
    for kind in MIX:
        values = main.latencies.get(kind, [])
        requests = main.requests(kind)
        kinds[kind] = {"requests": requests, "ok": len(values), "rate": round(requests / main.wall, 2)}
        kinds[kind] |= {f"p{p}_ms": round(pct(values, p), 1) if values else None for p in (50, 95, 99)}
        print(
            f"| {kind} | {requests} | {requests / main.wall:.1f} | {requests - len(values)} "
            f"| {pct(values, 50):.1f} | {pct(values, 95):.1f} | {pct(values, 99):.1f} |"
        )
    total = main.requests()
    failed = sum(main.failures.values())
    print(f"| **all** | {total} | {total / main.wall:.1f} | {failed} | | | |")
    print(f"\nrouted calls by endpoint (whole run): {run['endpoints']}")
    everything: Tally = run["everything"]
    errors: Counter[str] = Counter()
    for (_, key), n in everything.failures.items():
        errors[key] += n
    print(f"errors by status:code (whole run): {dict(errors) or 'none'}")
    print(
        f"web: {workers} worker(s), CPU {run['web_cpu']:.1f} s in the main phase "
        f"({100 * run['web_cpu'] / main.wall:.0f}% of one core); load client CPU {run['client_cpu']:.1f} s; "
        f"web peak RSS (VmHWM, master + workers) {peak_mb:.0f} MB"
    )
    return {
        "duration_s": round(main.wall, 2),
        "concurrency": run["knee"],
        "knee_rate": None if run["knee_rate"] is None else round(run["knee_rate"], 2),
        "arrival_rate": None if run["rate"] is None else round(run["rate"], 2),
        "ramp": [
            {"concurrency": c, "requests": t.requests(), "rate": round(t.requests() / t.wall, 1), "severe": severe(t)}
            for c, t in run["steps"]
        ],
        "requests": total,
        "rate": round(total / main.wall, 2),
        "kinds": kinds,
        "endpoints": run["endpoints"],
        "requests_whole_run": everything.requests(),
        "errors": dict(errors),
        "status_5xx": sum(n for key, n in errors.items() if key.startswith("5")),
        "transport_errors": sum(n for key, n in errors.items() if key.startswith("-:")),
        "check_failures": sum(n for key, n in errors.items() if ":check:" in key),
        "key_tests_skipped": run["key_tests_skipped"],
        "web_peak_rss_mb": round(peak_mb, 1),
        "web_cpu_s": round(run["web_cpu"], 2),
        "workers": workers,
        "resources": report_resources(args, run),
    }


def _table(rows: list[list[Any]]) -> None:
    print("\n".join("| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows))


def report_resources(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """The sampled series: a table by window, each series' trend after the warm-up, and the
    flatness rules' verdicts."""
    samples = run["samples"]
    windows = soak.report_windows(samples)
    print(f"\n## Resources and latency by window ({len(samples)} samples, every {args.sample_seconds:g} s)")
    columns = [
        ("ok req/s", "ok_per_s"),
        ("failed", "failed"),
        ("p50 ms", "p50_ms"),
        ("p95 ms", "p95_ms"),
        ("p99 ms", "p99_ms"),
        ("web RSS MB", "web_rss_mb"),
        ("web fds min", "web_fds_min"),
        ("web fds max", "web_fds_max"),
        ("DB conns max", "db_connections_max"),
        (f"web DB idle > {soak.STALE_SECONDS} s max", "db_stale_web_max"),
        ("in flight max", "in_flight_max"),
        ("load avg", "load1"),
    ]
    if run["processes"].get("worker"):
        columns[-1:-1] = [
            ("worker RSS MB", "worker_rss_mb"),
            ("queue max", "queue_depth_max"),
            ("unacked max", "unacked_max"),
        ]
    _table([["min", *(name for name, _ in columns)], ["---"] * (len(columns) + 1)])
    for window in windows:
        minutes = f"{window['from_s'] / 60:.1f}-{window['to_s'] / 60:.1f}"
        _table([[minutes, *(window[key] for _, key in columns)]])

    series = soak.trends(samples, args.main_seconds)
    verdicts = soak.flatness(series, soak=bool(args.soak_minutes), rate=run["rate"])
    warmup = soak.WARMUP_FRACTION * args.main_seconds
    print(f"\n## Trends after the warm-up (first {warmup:.0f} s left out; first/last window: a fifth of the rest each)")
    fields = ["first", "last", "first_min", "last_min", "first_max", "last_max", "slope_per_min", "min", "max"]
    _table([["series (first/last: window mean)", *(f.replace("_", " ") for f in fields)], ["---"] * (len(fields) + 1)])
    web_master = run["processes"]["web"]
    for name, trend in series.items():
        if name.endswith(".processes") or (".pid" in name and name.endswith(".fds")):
            continue
        label = name.replace(f"web.pid{web_master}.", "web master.").replace("web.pid", "web worker ")
        _table([[label, *(trend.get(f) for f in fields)]])
    print("\n## Flat?")
    for name, verdict in verdicts.items():
        print(f"- {'PASS' if verdict['ok'] else 'FAIL'} {name}")
    return {
        "sample_seconds": args.sample_seconds,
        "samples": len(samples),
        "warmup_s": round(warmup, 1),
        "windows": windows,
        "trends": series,
        "flat": {name: {"ok": verdict["ok"], "metric": verdict["metric"]} for name, verdict in verdicts.items()},
        "flat_ok": all(verdict["ok"] for verdict in verdicts.values()),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("NIYRA_LOAD_SECONDS", "60")),
        help="main phase, seconds (default: $NIYRA_LOAD_SECONDS or 60)",
    )
    parser.add_argument("--concurrency", type=int, default=0, help="skip the ramp and run the main phase at this")
    parser.add_argument(
        "--soak-minutes",
        type=float,
        nargs="?",
        const=15.0,
        default=None,
        help="soak: after the ramp, this many minutes (15 if no number is given) of open-loop arrivals at half the "
        "knee's throughput, with a Celery worker and beat running",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="skip the ramp; open loop at this many requests/s")
    parser.add_argument(
        "--sample-seconds", type=float, default=0.0, help="resource sampling interval (default: 2 to 5 s, by length)"
    )
    parser.add_argument(
        "--connections", type=int, default=None, help="soak: OAuth connections the worker refreshes (default 10)"
    )
    parser.add_argument("--ramp", default="2,4,8,16,32,64", help="concurrency steps of the ramp")
    parser.add_argument("--step-seconds", type=float, default=5.0, help="length of each ramp step")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at concurrency 4 before the ramp")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY; production: 2)")
    parser.add_argument("--credits-users", type=int, default=20)
    parser.add_argument(
        "--byok-users",
        type=int,
        default=None,
        help="also the key testers: 30 tests an hour each (default 30; soak: 100)",
    )
    parser.add_argument("--database", default="niyra_load_bench", help="dropped and recreated: niyra_load_*")
    parser.add_argument(
        "--postgres",
        default="postgres://postgres@127.0.0.1:5432",
        help="server URL naming no database (TCP, or ?host=<socket dir>)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10", help="the web server's Redis db")
    parser.add_argument("--drop-database", action="store_true", help="drop the database at the end")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    args.ramp = [int(step) for step in args.ramp.split(",")]
    if not DB_NAME_RULE.fullmatch(args.database):
        parser.error("--database must look like niyra_load_<lower-case letters, digits, _>: the run drops it")
    if args.soak_minutes is None:
        if not 1 <= args.duration <= 600:
            parser.error("--duration: 1 to 600 seconds")
        if args.connections:
            parser.error("--connections: soak only (the worker refreshes them)")
        args.main_seconds, args.connections = args.duration, 0
    else:
        if not 1 <= args.soak_minutes <= 24 * 60:
            parser.error("--soak-minutes: 1 to 1440")
        if args.concurrency:
            parser.error("--soak-minutes runs an open loop: give --rate, not --concurrency")
        args.main_seconds = args.soak_minutes * 60
        args.connections = 10 if args.connections is None else args.connections
    if args.byok_users is None:
        args.byok_users = 30 if args.soak_minutes is None else 100
    if args.connections > args.credits_users:
        parser.error("--connections: at most --credits-users (each connection is a credits user's)")
    args.sample_seconds = args.sample_seconds or max(2.0, min(5.0, args.main_seconds / 30))
    if not 1 <= args.sample_seconds <= 60 or args.rate < 0:
        parser.error("--sample-seconds: 1 to 60; --rate: positive")
    return args


@contextlib.contextmanager
def running(command: list[str], *, env: dict[str, str], **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child process of the run, stopped (SIGTERM, then SIGKILL after 15 s) when the block ends."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, preexec_fn=_die_with_parent, **popen)  # no threads yet
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_celery(stack: contextlib.ExitStack, env: dict[str, str], scratch: Path, redis_url: str) -> dict[str, int]:
    """The Procfile's worker and beat on the run's Redis db (emptied of earlier messages first),
    beat's schedule file in `scratch`; stopped when `stack` closes. Returns their pids."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(soak.CELERY_QUEUE, "unacked", "unacked_index")
    finally:
        client.close()
    celery = str(Path(sys.executable).parent / "celery")
    log = stack.enter_context((scratch / "worker.log").open("wb"))
    worker = stack.enter_context(
        running(
            [
                celery,
                "-A",
                "niyra",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "4",
                "-n",
                f"load-{os.getpid()}@%h",
            ],
            env=env | {"PGAPPNAME": "niyra-load-worker", "LOG_LEVEL": "INFO"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    beat = stack.enter_context(
        running(
            [celery, "-A", "niyra", "beat", "--loglevel", "INFO", "--schedule", str(scratch / "celerybeat-schedule")],
            env=env | {"PGAPPNAME": "niyra-load-beat"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    return {"worker": worker.pid, "beat": beat.pid}


TASK_LINE = re.compile(r"Task ([\w.]+)\[[0-9a-f-]+\] (succeeded|raised|retry)(?: unexpected: (.{0,160}))?")


def task_outcomes(log: str) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Outcomes by task name, as the worker's log lines say them, and the errors of the tasks that
    raised (the start of each message, by task)."""
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    errors: Counter[str] = Counter()
    for name, outcome, error in TASK_LINE.findall(log):
        outcomes[name][outcome] += 1
        if outcome == "raised":
            errors[f"{name}: {error}"] += 1
    return {name: dict(counts) for name, counts in sorted(outcomes.items())}, dict(errors)


def measure(args: argparse.Namespace, web_log: IO[bytes]) -> dict[str, Any]:
    sandbox_port, web_port = free_port(), free_port()
    sandbox_url, niyra_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{web_port}"
    env = stack_env(args, sandbox_url=sandbox_url, web_port=web_port)
    started = time.monotonic()
    seconds: dict[str, float] = {}  # where the wall time of the run went

    def lap(name: str) -> None:
        seconds[name] = round(time.monotonic() - started - sum(seconds.values()), 1)

    create_database(args)
    sandbox_command = [sys.executable, "-m", "sandbox", "--port", str(sandbox_port)]
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    web_command = [gunicorn, "niyra.asgi:application", "--config", "gunicorn.conf.py"]
    # The web server boots while the set-up runs: it touches no table until the first request.
    # Each group of processes connects to PostgreSQL under its own name, so the sampler can count them.
    with (
        running(sandbox_command, env=env, stdout=subprocess.DEVNULL),
        running(
            [*web_command, "--bind", f"127.0.0.1:{web_port}"], env=env | {"PGAPPNAME": "niyra-load-web"}, stderr=web_log
        ) as web,
        tempfile.TemporaryDirectory(prefix="niyra-load-") as scratch,
        contextlib.ExitStack() as celery,
    ):
        cleared = clear_throttle_history(args.redis_url)
        tokens = setup_database(args, env, sandbox_url)
        processes = {"web": web.pid}
        if args.soak_minutes:
            processes |= start_celery(celery, env, Path(scratch), args.redis_url)
        wait_http(f"{sandbox_url}/_sandbox/log")
        wait_http(f"{niyra_url}/healthz", timeout=120)
        lap("setup")
        print(
            f"# Load (mixed traffic) — {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f} at start, gunicorn workers={args.workers}, PostgreSQL, "
            f"sandbox on loopback; {args.credits_users} credits users, {args.byok_users} BYOK users"
            f"{f', {args.connections} OAuth connections, a Celery worker and beat' if args.soak_minutes else ''}; "
            f"set-up {seconds['setup']:.0f} s ({cleared} stale throttle keys cleared)"
        )
        run = asyncio.run(drive(args, niyra_url, tokens, processes))
        lap("traffic")
        result = report(args, run, peak_mb=peak_rss_mb(web.pid), workers=args.workers)
        celery.close()  # the worker finishes what it holds, then its log is complete
        if args.soak_minutes:
            worker_log = (Path(scratch) / "worker.log").read_text(errors="replace")
            result["tasks"], result["task_errors"] = task_outcomes(worker_log)
            print(f"\nCelery tasks the worker logged (idle ticks log nothing): {result['tasks']}")
            if result["task_errors"]:
                print(f"errors of the tasks that raised: {result['task_errors']}")
    lap("stop")
    clear_throttle_history(args.redis_url)  # nothing that later shares this Redis db should inherit them
    ledger = reconcile(env)
    db_ok, db = database_check(args, run["everything"])
    lap("checks")
    print(f"\nreconcile_ledger: {ledger}")
    print(
        "database/client (whole run): " + ", ".join(f"{name} {v['database']}/{v['client']}" for name, v in db.items())
    )
    result |= {"reconcile": ledger, "reconcile_clean": ledger.startswith("clean"), "db": db, "db_ok": db_ok}
    result["seconds"] = seconds
    print(f"wall time: {seconds}")
    result["ok"] = (
        result["reconcile_clean"]
        and db_ok
        and result["resources"]["flat_ok"]
        and not any(outcomes.get("raised") for outcomes in result.get("tasks", {}).values())
        and not result["status_5xx"]
        and not result["transport_errors"]
        and not result["check_failures"]
        and not result["errors"]
        and all(kind["ok"] for kind in result["kinds"].values())
    )
    return result


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` blocks stop the servers
    result: dict[str, Any] = {"ok": False}
    with tempfile.TemporaryFile() as web_log:
        try:
            result = measure(args, web_log)
        finally:
            if not result["ok"]:
                web_log.seek(0)
                tail = web_log.read().decode(errors="replace").splitlines()[-40:]
                print("\nweb server log (last lines):\n" + "\n".join(tail) if tail else "\nweb server log: empty")
            if args.drop_database:
                with psycopg.connect(database_url(args.postgres, "postgres"), autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
    print("LOAD_RESULT " + json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
