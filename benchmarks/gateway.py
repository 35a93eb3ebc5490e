"""The gateway side by side (issue 13, "Speed"): the upstream directly, Niyra's credits and BYOK
paths, a LiteLLM proxy and Portkey's gateway, all in front of the same provider sandbox and
driven by the same light aiohttp client (not an SDK, whose own CPU would hide the servers'),
interleaved in rounds within one run, on loopback.

Phases (every one bounded in time), per round and per contender:

* throughput: non-streamed chat completions at concurrency 64 for ``--seconds``: req/s, errors,
  and the server processes' CPU per answered request;
* latency: the same call at concurrency 1: p50/p99, and added = contender minus direct;
* stream: 500-token streams at concurrency 8 (no ``stream_options``, each read to the end):
  streams/s;
* slow: 500 concurrent calls that take 2 s each at the provider: wall time until all are done.
  Then Niyra and LiteLLM are restarted with one worker and the slow phase runs again.

Every answer is checked (status 200 and the sandbox's reply; a stream has all 500 tokens and
``[DONE]``); anything else is an error, counted and shown. At the end ``reconcile_ledger`` must
be clean on the bench database, and Niyra must have answered every call, or the run exits 1.

    .venv/bin/python benchmarks/gateway.py                # ~8 minutes, 3 rounds, 2 web workers
    .venv/bin/python benchmarks/gateway.py --quick        # a smoke run, ~2 minutes
    .venv/bin/python benchmarks/gateway.py --niyra-only --quick --phases throughput,latency

LiteLLM (``litellm[proxy]``, PyPI) and Portkey (``@portkey-ai/gateway``, npm) are installed on
the first run into ``var/bench-litellm-venv`` and ``var/bench-portkey`` and reused; neither is a
project dependency. If an install or a start fails, the run says so and goes on without it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
LOGS = VAR / "bench-gateway-logs"  # the servers' own logs and LiteLLM's config, kept for a look after a run
LITELLM_VENV = VAR / "bench-litellm-venv"
PORTKEY_DIR = VAR / "bench-portkey"
PORTKEY_START = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
DB_NAME = "niyra_bench_gateway"
REDIS_URL = "redis://127.0.0.1:6379/8"
MODEL = "gpt-4.1-mini"
SLOW_MODEL = "gpt-4.1-mini-slow2000"  # LiteLLM's name for the same model on a slow2000 key
STREAM_TOKENS = 500
SLOW_CALLS = 500
PROMPT = [{"role": "user", "content": "Say hello to the benchmark"}]
CALL_BODY = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": 16}).encode()
SLOW_BODY_LITELLM = json.dumps({"model": SLOW_MODEL, "messages": PROMPT, "max_tokens": 16}).encode()
STREAM_BODY = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": STREAM_TOKENS, "stream": True}).encode()
DIRECT_KEY = "sk-proj-bench-direct"
SLOW_KEY = "sk-proj-slow2000-bench"
LITELLM_MASTER_KEY = "sk-bench-" + secrets.token_hex(16)  # LiteLLM refuses to start without one
NIYRA_CONTENDERS = ("credits", "byok")
ALL_CONTENDERS = ("direct", "credits", "byok", "litellm", "portkey")
PHASES = ("throughput", "latency", "stream", "slow")
REQUEST_TIMEOUT = 60.0


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Until ``url`` answers (any status); a process that exits first is a failed start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants (those still alive)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return total


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# -- the contenders -------------------------------------------------------------------------


@dataclass
class Contender:
    """One way to reach the sandbox's chat completions: where, with which headers, and which
    process tree to charge the CPU to."""

    name: str
    url: str
    headers: dict[str, str]
    slow_headers: dict[str, str]
    slow_body: bytes = CALL_BODY
    pid: int | None = None


@dataclass
class Stack:
    """The processes of a run; restartable one by one (for the one-worker slow phase)."""

    args: argparse.Namespace
    sandbox_url: str = ""
    niyra_env: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    sandbox: subprocess.Popen[bytes] | None = None
    niyra: subprocess.Popen[bytes] | None = None
    litellm: subprocess.Popen[bytes] | None = None
    portkey: subprocess.Popen[bytes] | None = None
    niyra_url: str = ""
    litellm_url: str = ""
    portkey_url: str = ""

    def stop_all(self) -> None:
        for process in (self.niyra, self.litellm, self.portkey, self.sandbox):
            stop(process)


def start_sandbox(stack: Stack) -> None:
    port = free_port()
    stack.sandbox = subprocess.Popen(
        [sys.executable, __file__, "--serve-sandbox", str(port), "--tree", str(stack.args.tree)],
        cwd=stack.args.tree,
        stdout=subprocess.DEVNULL,
    )
    stack.sandbox_url = f"http://127.0.0.1:{port}"
    wait_http(f"{stack.sandbox_url}/_sandbox/log", stack.sandbox, 30)


def serve_sandbox(port: int, tree: Path) -> None:
    """The provider sandbox, with replies as long as ``max_tokens`` asks (up to 500 tokens).

    The sandbox's canned reply is 12 words; the stream phase needs 500 tokens. Until the sandbox
    can say more by itself, this process widens its reply tables (the words cycle, as
    ``sandbox.reply_text`` does); a sandbox that already streams 500 tokens is left as it is.
    """
    here = Path(__file__).resolve().parent  # benchmarks/sandbox.py would shadow the package
    sys.path[:] = [str(tree), *(p for p in sys.path if Path(p or ".").resolve() != here)]
    sandbox = importlib.import_module("sandbox")
    sandbox_openai = importlib.import_module("sandbox.openai")
    reply = importlib.import_module("sandbox.replies").Reply

    if sandbox.MAX_OUTPUT < STREAM_TOKENS:
        words = sandbox.reply_text(STREAM_TOKENS).split()
        short = sandbox.MAX_OUTPUT

        def plan_reply(prompt_words: int, max_tokens: int | None, behaviour: Any) -> Any:
            out = short if max_tokens is None else min(max_tokens, STREAM_TOKENS)
            cached = prompt_words // 2 if behaviour.cached else 0
            return reply(prompt_words, out, max_tokens is not None and max_tokens < STREAM_TOKENS, cached)

        widened = {
            "_DELTA_JSON": tuple(json.dumps(w if i == 0 else " " + w) for i, w in enumerate(words)),
            "TEXT_JSON": tuple(json.dumps(" ".join(words[:n])) for n in range(STREAM_TOKENS + 1)),
            "plan_reply": plan_reply,
        }
        for name, value in widened.items():
            setattr(sandbox_openai, name, value)
    sandbox.SandboxServer(port=port, log_maxlen=1000).serve_forever()


def niyra_environment(stack: Stack) -> dict[str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "NIYRA_", "DATABASE_", "REDIS_"))},
        "DJANGO_SETTINGS_MODULE": "niyra.settings.production",
        "NIYRA_READ_DOTENV": "0",
        "DEBUG": "False",
        "SECURE_SSL_REDIRECT": "False",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "NIYRA_ENCRYPTION_KEYS": "bench:" + base64.b64encode(os.urandom(32)).decode(),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "REDIS_URL": REDIS_URL,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ANTHROPIC_API_KEY": "sk-ant-platform-bench",
        "OPENAI_API_KEY": "sk-proj-platform-bench",
        "EMAIL_URL": "consolemail://",
        "NIYRA_PUBLIC_URL": "http://127.0.0.1",
        "ANTHROPIC_BASE_URL": f"{stack.sandbox_url}/anthropic",
        "OPENAI_BASE_URL": f"{stack.sandbox_url}/openai/v1",
        "LOG_LEVEL": "WARNING",
        "DB_POOL_MAX_SIZE": "40",
    }
    for pair in stack.args.env:
        name, _, value = pair.partition("=")
        env[name] = value
    return env


SETUP_SCRIPT = """
from accounts.services import api_token_create, user_create
from byok.services import provider_key_save
from credits.services.accounts import billing_plan_set
from credits.services.ledger import credit_grant
keys = {"byok": "sk-proj-bench-byok-%(hex)s", "slow": "sk-proj-slow2000-byok-%(hex)s"}
for name, plan in (("credits", "free"), ("byok", "pro"), ("slow", "pro")):
    user = user_create(email=f"{name}@bench.local", password=None)
    billing_plan_set(user=user, plan=plan)
    credit_grant(user=user, amount=10**12, reason="benchmark", idempotency_key="bench")
    if name in keys:
        provider_key_save(user=user, provider="openai", key=keys[name])
    print("TOKEN", name, api_token_create(user=user, name="bench").plaintext)
"""


def setup_niyra_database(stack: Stack) -> None:
    """A fresh database, migrated; a funded free user (credits, no key), a pro user with an
    OpenAI key on the sandbox (BYOK) and one whose key has ``slow2000`` in it."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    env = stack.niyra_env
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=stack.args.tree, env=env, check=True, timeout=300
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SETUP_SCRIPT % {"hex": secrets.token_hex(6)}],
        cwd=stack.args.tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "TOKEN":
            stack.tokens[parts[1]] = parts[2]
    if set(stack.tokens) != {"credits", "byok", "slow"}:
        raise RuntimeError(f"setting up the bench users failed:\n{result.stdout}\n{result.stderr}")


def start_niyra(stack: Stack, workers: int) -> None:
    port = free_port()
    env = {**stack.niyra_env, "PORT": str(port), "WEB_CONCURRENCY": str(workers)}
    stack.niyra = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "niyra.asgi:application",
            "--config",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
        ],
        cwd=stack.args.tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(LOGS / "niyra.log").open("ab"),
    )
    stack.niyra_url = f"http://127.0.0.1:{port}"
    wait_http(f"{stack.niyra_url}/healthz", stack.niyra, 60)


def ensure_litellm() -> Path | None:
    """``litellm`` from its own virtualenv, installed from PyPI on the first run."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if litellm.exists():
        return litellm
    print("Installing litellm[proxy] into var/bench-litellm-venv (first run only)…", flush=True)
    try:
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run(["python3.11", "-m", "venv", str(LITELLM_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"LiteLLM install failed, running without it: {exc} {detail.decode(errors='replace')[-500:]}")
        return None
    return litellm if litellm.exists() else None


def start_litellm(stack: Stack, workers: int) -> None:
    litellm = ensure_litellm()
    if litellm is None:
        return
    base = f"{stack.sandbox_url}/openai/v1"
    config = LOGS / "litellm_config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        f"    litellm_params: {{model: openai/{MODEL}, api_base: '{base}', api_key: sk-proj-bench-litellm}}\n"
        f"  - model_name: {SLOW_MODEL}\n"
        f"    litellm_params: {{model: openai/{MODEL}, api_base: '{base}', api_key: {SLOW_KEY}-litellm}}\n"
        "litellm_settings: {telemetry: false}\n"
        f"general_settings: {{master_key: {LITELLM_MASTER_KEY}}}\n"
    )
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "LITELLM_", "OPENAI_"))},
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from the internet
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    stack.litellm = subprocess.Popen(
        [
            str(litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
            # uvicorn's supervisor kills a worker that is not up within 5 s; on a busy 2-CPU
            # machine LiteLLM's start takes longer, and its workers would be killed forever
            "--timeout_worker_healthcheck",
            "180",
        ],
        cwd=LOGS,
        env=env,
        stdout=(LOGS / "litellm.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    stack.litellm_url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{stack.litellm_url}/health/liveliness", stack.litellm, 240)
    except RuntimeError as exc:
        print(f"LiteLLM did not start ({exc}); see {LOGS / 'litellm.log'}; running without it")
        stop(stack.litellm)
        stack.litellm = None


def ensure_portkey() -> Path | None:
    """Portkey's gateway from npm, installed into var/bench-portkey on the first run."""
    if PORTKEY_START.exists():
        return PORTKEY_START
    print("Installing @portkey-ai/gateway into var/bench-portkey (first run only)…", flush=True)
    try:
        PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
        if not (PORTKEY_DIR / "package.json").exists():
            (PORTKEY_DIR / "package.json").write_text('{"private": true}\n')
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "@portkey-ai/gateway"],
            cwd=PORTKEY_DIR,
            check=True,
            timeout=600,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"Portkey install failed, running without it: {exc} {detail.decode(errors='replace')[-500:]}")
        return None
    return PORTKEY_START if PORTKEY_START.exists() else None


def start_portkey(stack: Stack) -> None:
    script = ensure_portkey()
    if script is None:
        return
    port = free_port()
    stack.portkey = subprocess.Popen(
        ["node", str(script), f"--port={port}", "--headless"],
        cwd=PORTKEY_DIR,
        env={**os.environ, "NODE_ENV": "production"},
        stdout=(LOGS / "portkey.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    stack.portkey_url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{stack.portkey_url}/", stack.portkey, 60)
    except RuntimeError as exc:
        print(f"Portkey did not start ({exc}); see {LOGS / 'portkey.log'}; running without it")
        stop(stack.portkey)
        stack.portkey = None


def contenders(stack: Stack, names: tuple[str, ...]) -> dict[str, Contender]:
    json_ct = {"Content-Type": "application/json"}
    built: dict[str, Contender] = {}
    sandbox = stack.sandbox
    for name in names:
        if name == "direct" and sandbox is not None:
            built[name] = Contender(
                name,
                f"{stack.sandbox_url}/openai/v1/chat/completions",
                {**json_ct, "Authorization": f"Bearer {DIRECT_KEY}"},
                {**json_ct, "Authorization": f"Bearer {SLOW_KEY}-direct"},
                pid=sandbox.pid,
            )
        elif name in NIYRA_CONTENDERS and stack.niyra is not None:
            built[name] = Contender(
                name,
                f"{stack.niyra_url}{stack.args.niyra_path}",
                {**json_ct, "Authorization": f"Bearer {stack.tokens[name]}"},
                {**json_ct, "Authorization": f"Bearer {stack.tokens['slow']}"},
                pid=stack.niyra.pid,
            )
        elif name == "litellm" and stack.litellm is not None:
            litellm = {**json_ct, "Authorization": f"Bearer {LITELLM_MASTER_KEY}"}
            built[name] = Contender(
                name,
                f"{stack.litellm_url}/v1/chat/completions",
                litellm,
                litellm,
                slow_body=SLOW_BODY_LITELLM,
                pid=stack.litellm.pid,
            )
        elif name == "portkey" and stack.portkey is not None:
            portkey = {
                **json_ct,
                "x-portkey-provider": "openai",
                "x-portkey-custom-host": f"{stack.sandbox_url}/openai/v1",
            }
            built[name] = Contender(
                name,
                f"{stack.portkey_url}/v1/chat/completions",
                {**portkey, "Authorization": f"Bearer {DIRECT_KEY}-portkey"},
                {**portkey, "Authorization": f"Bearer {SLOW_KEY}-portkey"},
                pid=stack.portkey.pid,
            )
    return built


# -- the load client ------------------------------------------------------------------------


@dataclass
class Run:
    """One phase of one contender in one round."""

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0

    def fail(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < 3:
            self.samples.append(f"{kind}: {detail[:300]}")

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall else 0.0

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


def check_call(status: int, body: bytes) -> str | None:
    """None if this is the sandbox's answer to a chat completion, else the error kind."""
    if status != 200:
        return f"HTTP {status}"
    if b'"choices"' not in body or b"Hello" not in body:
        return "200 without the reply"
    return None


def check_stream(status: int, body: bytes) -> str | None:
    """None if the stream carried every token and ended with [DONE]. Counts ``"content"`` keys
    in C rather than parsing 500 events: the client's CPU is the servers' CPU on this machine."""
    if status != 200:
        return f"HTTP {status}"
    if b"[DONE]" not in body[-64:]:
        return "stream without [DONE]"
    deltas = body.count(b'"content"')
    if deltas < STREAM_TOKENS:
        return f"stream with {deltas} < {STREAM_TOKENS} content deltas"
    return None


Send = Callable[[aiohttp.ClientSession, Run], Awaitable[None]]


def sender(contender: Contender, *, stream: bool = False, slow: bool = False) -> Send:
    headers = contender.slow_headers if slow else contender.headers
    body = STREAM_BODY if stream else contender.slow_body if slow else CALL_BODY
    check = check_stream if stream else check_call

    async def send(session: aiohttp.ClientSession, run: Run) -> None:
        started = time.perf_counter()
        try:
            async with session.post(contender.url, data=body, headers=headers) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            run.fail(type(exc).__name__, str(exc))
            return
        problem = check(status, payload)
        if problem is not None:
            run.fail(problem, payload.decode(errors="replace"))
            return
        run.ok += 1
        run.latencies.append(time.perf_counter() - started)

    return send


async def closed_loop(session: aiohttp.ClientSession, send: Send, *, concurrency: int, seconds: float) -> Run:
    """``concurrency`` clients, each sending its next call when the last one ends, until the
    deadline; calls in flight at the deadline are finished (each bounded by its timeout)."""
    run = Run()
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            await send(session, run)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), seconds + REQUEST_TIMEOUT + 5)
    run.wall = time.perf_counter() - started
    return run


async def burst(session: aiohttp.ClientSession, send: Send, *, calls: int, timeout: float) -> Run:
    """``calls`` calls started at once; the wall time until the last one is answered."""
    run = Run()
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(send(session, run)) for _ in range(calls)]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
        run.fail("unfinished at the time limit", f"{timeout:.0f} s")
    await asyncio.gather(*pending, return_exceptions=True)
    run.wall = time.perf_counter() - started
    return run


async def measure(session: aiohttp.ClientSession, contender: Contender, phase: str, args: argparse.Namespace) -> Run:
    before = tree_cpu_seconds(contender.pid) if contender.pid else 0.0
    if phase == "throughput":
        run = await closed_loop(session, sender(contender), concurrency=64, seconds=args.seconds)
    elif phase == "latency":
        run = await closed_loop(session, sender(contender), concurrency=1, seconds=args.latency_seconds)
    elif phase == "stream":
        run = await closed_loop(session, sender(contender, stream=True), concurrency=8, seconds=args.seconds)
    else:
        run = await burst(session, sender(contender, slow=True), calls=SLOW_CALLS, timeout=args.slow_timeout)
    if contender.pid:
        run.cpu = tree_cpu_seconds(contender.pid) - before
    return run


# -- the run --------------------------------------------------------------------------------

Results = dict[tuple[str, str], list[Run]]


def new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))


async def rounds(stack: Stack, names: tuple[str, ...], phases: tuple[str, ...], count: int) -> Results:
    """Each measurement opens its own connections: a kept-alive connection left idle while the
    other contenders run may be closed by the server just as the client reuses it."""
    results: Results = {}
    live = contenders(stack, names)
    for contender in live.values():  # warm-up: caches and pools; a failed start shows here
        async with new_session() as session:
            warm = await closed_loop(session, sender(contender), concurrency=8, seconds=1.0)
            warm_stream = (
                Run()
                if contender.name == "portkey"
                else await closed_loop(session, sender(contender, stream=True), concurrency=2, seconds=0.5)
            )
        if warm.errors or warm_stream.errors:
            print(f"warm-up {contender.name}: {warm.ok} ok, {dict(warm.errors + warm_stream.errors)}")
            for sample in warm.samples + warm_stream.samples:
                print(f"    {sample}")
    for number in range(count):
        order = list(live.values())
        order = order[number % len(order) :] + order[: number % len(order)]  # rotate who goes first
        for phase in phases:
            for contender in order:
                if phase == "slow" and contender.name == "credits":
                    continue  # the slow key is a BYOK key: Niyra's slow calls run as "byok"
                if phase == "stream" and contender.name == "portkey":
                    continue  # @portkey-ai/gateway 1.15.2 answers every stream 500 here (see README)
                async with new_session() as session:
                    run = await measure(session, contender, phase, stack.args)
                results.setdefault((phase, contender.name), []).append(run)
                summary = f"{run.wall:.2f} s wall" if phase == "slow" else f"{run.rate:.0f}/s, p50 {run.pct(50):.2f} ms"
                print(
                    f"  round {number + 1} {phase:<10} {contender.name:<8} {run.ok:>6} ok "
                    f"{sum(run.errors.values()):>4} errors  {summary}",
                    flush=True,
                )
    return results


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def figure(results: Results, phase: str, name: str, pick: Callable[[Run], float]) -> float:
    return median([pick(run) for run in results.get((phase, name), [])])


def added(results: Results, name: str, p: float) -> float:
    """Median over rounds of (contender's percentile - direct's percentile in the same round)."""
    mine, direct = results.get(("latency", name), []), results.get(("latency", "direct"), [])
    return median([a.pct(p) - b.pct(p) for a, b in zip(mine, direct, strict=False)])


def errors_of(results: Results, name: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for (_, who), runs in results.items():
        if who == name:
            for run in runs:
                total.update(run.errors)
    return total


def report(results: Results, single: Results, args: argparse.Namespace) -> dict[str, Any]:
    names = [n for n in ALL_CONTENDERS if any(who == n for _, who in (*results, *single))]
    direct_streams = figure(results, "stream", "direct", lambda r: r.rate)
    print(f"\n## Figures (medians of {args.rounds} rounds; {args.workers} web workers for Niyra and LiteLLM)\n")
    print(
        "| contender | req/s c=64 | server CPU ms/req | p50 ms c=1 | p99 ms c=1 | added p50 | added p99 "
        f"| streams/s c=8 | of direct | {SLOW_CALLS} x 2 s wall ({args.workers} w) | same, 1 worker | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out: dict[str, Any] = {}
    for name in names:
        row = {
            "rps": figure(results, "throughput", name, lambda r: r.rate),
            "cpu_ms": figure(results, "throughput", name, lambda r: r.cpu * 1000 / r.ok if r.ok else float("nan")),
            "p50": figure(results, "latency", name, lambda r: r.pct(50)),
            "p99": figure(results, "latency", name, lambda r: r.pct(99)),
            "added_p50": added(results, name, 50) if name != "direct" else 0.0,
            "added_p99": added(results, name, 99) if name != "direct" else 0.0,
            "streams": figure(results, "stream", name, lambda r: r.rate),
            "slow_wall": figure(results, "slow", name, lambda r: r.wall),
            "slow_wall_1w": figure(single, "slow", name, lambda r: r.wall),
            "errors": sum((errors_of(results, name) + errors_of(single, name)).values()),
        }
        share = row["streams"] / direct_streams * 100 if direct_streams else float("nan")
        out[name] = row
        print(
            f"| {name} | {row['rps']:.0f} | {row['cpu_ms']:.2f} | {row['p50']:.2f} | {row['p99']:.2f} "
            f"| {row['added_p50']:.2f} | {row['added_p99']:.2f} | {row['streams']:.1f} | {share:.1f}% "
            f"| {row['slow_wall']:.2f} | {row['slow_wall_1w']:.2f} | {row['errors']} |"
        )
    credits, litellm, direct = out.get("credits", {}), out.get("litellm", {}), out.get("direct", {})
    print("\n## Against the targets\n")
    targets = [
        (
            "credits throughput ÷ LiteLLM",
            credits.get("rps", 0) / litellm["rps"] if litellm.get("rps") else None,
            5.0,
            "x",
            True,
        ),
        ("added p50, credits (ms)", credits.get("added_p50"), 2.0, " ms", False),
        ("added p50, BYOK (ms)", out.get("byok", {}).get("added_p50"), 2.0, " ms", False),
        (
            "credits stream rate ÷ direct",
            credits.get("streams", 0) / direct["streams"] * 100 if direct.get("streams") else None,
            25.0,
            "%",
            True,
        ),
        (f"{SLOW_CALLS} slow calls, one worker, BYOK (s)", out.get("byok", {}).get("slow_wall_1w"), 2.5, " s", False),
    ]
    for label, value, target, unit, higher in targets:
        if value is None or value != value:
            print(f"- {label}: not measured (target {'≥' if higher else '≤'} {target:g}{unit})")
            continue
        met = value >= target if higher else value <= target
        verdict = "met" if met else "missed"
        print(f"- {label}: **{value:.2f}{unit}** (target {'≥' if higher else '≤'} {target:g}{unit}) — {verdict}")
    for name in names:
        kinds = errors_of(results, name) + errors_of(single, name)
        if kinds:
            print(f"\nerrors of {name}: {dict(kinds)}")
            for key, runs in (*results.items(), *single.items()):
                if key[1] == name:
                    for sample in [s for run in runs for s in run.samples][:3]:
                        print(f"    {key[0]}: {sample}")
    return out


def reconcile(stack: Stack) -> tuple[bool, str]:
    result = subprocess.run(
        [sys.executable, "manage.py", "reconcile_ledger"],
        cwd=stack.args.tree,
        env=stack.niyra_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, "\n".join(lines[-5:])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, 2 s phases: a smoke run")
    parser.add_argument("--workers", type=int, default=2, help="web workers for Niyra and LiteLLM (default 2)")
    parser.add_argument("--rounds", type=int, help="rounds of all phases (default 3; 1 with --quick)")
    parser.add_argument("--seconds", type=float, help="throughput and stream phase length (default 8; 2 quick)")
    parser.add_argument("--latency-seconds", type=float, help="latency phase length (default 5; 2 quick)")
    parser.add_argument("--slow-timeout", type=float, default=30.0, help="time limit of one slow burst (s)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--niyra-only", action="store_true", help="only direct, credits and BYOK")
    parser.add_argument("--contenders", default=",".join(ALL_CONTENDERS), help="comma-separated subset")
    parser.add_argument("--no-single-worker", action="store_true", help="skip the one-worker slow phase")
    parser.add_argument("--niyra-path", default="/v1/chat/completions", help="Niyra's chat completions path")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra env for Niyra")
    parser.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="the checkout whose Niyra and sandbox run (default this one; e.g. `git archive` of a commit)",
    )
    parser.add_argument("--serve-sandbox", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.tree = args.tree.resolve()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 8.0)
    args.latency_seconds = args.latency_seconds or (2.0 if args.quick else 5.0)
    args.phases = tuple(p for p in PHASES if p in args.phases.split(","))
    chosen = (*NIYRA_CONTENDERS, "direct") if args.niyra_only else tuple(args.contenders.split(","))
    unknown = set(chosen) - set(ALL_CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; choose from {', '.join(ALL_CONTENDERS)}")
    args.names = tuple(n for n in ALL_CONTENDERS if n in chosen)
    return args


def main() -> int:
    args = parse_args()
    if args.serve_sandbox is not None:
        serve_sandbox(args.serve_sandbox, args.tree)
        return 0
    load_before = loadavg()
    started = time.monotonic()
    print(
        f"# Gateway benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')} — {os.cpu_count()} CPUs, load {load_before}\n"
        f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}"
    )
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("*.log"):
        old.unlink()
    stack = Stack(args=args)
    try:
        start_sandbox(stack)
        stack.niyra_env = niyra_environment(stack)
        setup_niyra_database(stack)
        start_niyra(stack, args.workers)
        if "litellm" in args.names:
            start_litellm(stack, args.workers)
        if "portkey" in args.names:
            start_portkey(stack)
        print(f"# sandbox {stack.sandbox_url}, Niyra {stack.niyra_url}{args.niyra_path} ({args.workers} workers)")
        results = asyncio.run(rounds(stack, args.names, args.phases, args.rounds))
        single: Results = {}
        if "slow" in args.phases and args.workers != 1 and not args.no_single_worker:
            print("\n# the slow phase again, Niyra and LiteLLM with one worker")
            stop(stack.niyra)
            start_niyra(stack, 1)
            again = tuple(n for n in args.names if n in ("byok", "litellm"))
            if stack.litellm is not None:
                stop(stack.litellm)
                start_litellm(stack, 1)
            single = asyncio.run(rounds(stack, again, ("slow",), 1 if args.quick else 2))
        elif args.workers == 1:
            single = {key: runs for key, runs in results.items() if key[0] == "slow"}
        summary = report(results, single, args)
        clean, detail = reconcile(stack)
    finally:
        stack.stop_all()
    niyra_errors = sum(summary.get(n, {}).get("errors", 0) for n in NIYRA_CONTENDERS)
    print(f"\nreconcile_ledger: {'clean' if clean else 'MISMATCH'} — {detail}")
    print(f"load average before {load_before}, after {loadavg()}; {time.monotonic() - started:.0f} s in all")
    figures = {name: {k: (None if v != v else v) for k, v in row.items()} for name, row in summary.items()}
    print("GATEWAY_RESULT " + json.dumps({"load_before": load_before, "workers": args.workers, "figures": figures}))
    if not clean:
        print("FAILED: the ledger does not reconcile")
        return 1
    if niyra_errors:
        print(f"FAILED: Niyra answered {niyra_errors} call(s) with something other than the expected 200")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
