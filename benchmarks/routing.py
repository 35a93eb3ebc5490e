"""Routing overhead, throughput and slow-call concurrency, against the sandbox, on PostgreSQL.

Runs the production web command (gunicorn + uvicorn workers, `gunicorn.conf.py`, DEBUG off)
in front of the provider sandbox, and drives both with the official async `openai` SDK:

1. added latency: the same SDK call made directly to the sandbox and through Niyra's
   OpenAI-compatible endpoint, p50/p99 at concurrency 1 and 8, on the credits (platform) and
   BYOK paths, streaming and not. Added = Niyra's percentile minus the direct one.
2. throughput at concurrency 8 and 64 (non-streaming, credits path: hold + settle per call).
3. 500 concurrent calls that each take 2 s at the provider: wall time, errors, and the peak
   memory (VmHWM) of the web process.

Everything is on loopback and bounded (each phase stops after a fixed number of requests or
`--max-seconds`). At the end `reconcile_ledger` must be clean.

    .venv/bin/python benchmarks/routing.py [--quick] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import openai
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
DB_NAME = "niyra_bench_routing"
MODEL = "gpt-4.1-mini"
PROMPT = [{"role": "user", "content": "Say hello to the benchmark"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process and its children, in MB."""
    total = 0
    pids = [
        pid,
        *[int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()],
    ]
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@dataclass
class Stats:
    latencies: list[float]
    errors: int
    wall: float
    error_kinds: dict[str, int] = field(default_factory=dict)

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


async def run_load(
    call: Callable[[], Awaitable[None]], *, concurrency: int, requests: int, max_seconds: float
) -> Stats:
    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    remaining = requests
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            started = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                errors += 1
                kind = f"{type(exc).__name__}:{getattr(exc, 'status_code', '')}"
                kinds[kind] = kinds.get(kind, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Stats(latencies, errors, time.perf_counter() - started, kinds)


def chat_call(client: openai.AsyncOpenAI, *, stream: bool) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        if stream:
            response = await client.chat.completions.create(
                model=MODEL, messages=PROMPT, max_tokens=16, stream=True, stream_options={"include_usage": True}
            )
            async for _ in response:
                pass
        else:
            await client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=16)

    return call


def setup_database(env: dict[str, str]) -> dict[str, str]:
    """Fresh database, migrated; a credits user and a BYOK user (keys validated by the sandbox).
    The cache goes with it: the key-check budgets there are keyed by user ids a fresh database
    hands out again, so a run after a few others would find its key saves refused."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    script = f"""
from accounts.services import api_token_create, user_create
from byok.services import provider_key_save
from credits.services.accounts import billing_plan_set
from credits.services.ledger import credit_grant
keys = {{"byok": "sk-proj-bench-{secrets.token_hex(6)}", "slow": "sk-proj-slow2000-{secrets.token_hex(6)}"}}
for name, plan in (("credits", "free"), ("byok", "pro"), ("slow", "pro")):
    user = user_create(email=f"{{name}}@bench.local", password=None)
    billing_plan_set(user=user, plan=plan)
    credit_grant(user=user, amount=10**12, reason="benchmark", idempotency_key="bench")
    if name in keys:
        provider_key_save(user=user, provider="openai", key=keys[name])
    print(name, api_token_create(user=user, name="bench").plaintext)
"""
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f"setup failed:\n{result.stderr[-3000:]}")
    lines = [line.split(" ", 1) for line in result.stdout.strip().splitlines()]
    tokens = {parts[0]: parts[1] for parts in lines if len(parts) == 2 and parts[1].startswith("niy_")}
    if set(tokens) != {"credits", "byok", "slow"}:
        raise RuntimeError(f"setup failed: {result.stdout}\n{result.stderr}")
    return tokens


def reconcile(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", "reconcile_ledger"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    return (
        "clean" if result.returncode == 0 else "MISMATCH"
    ) + f" ({result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ''})"


async def measure(args: argparse.Namespace, sandbox: str, niyra: str, tokens: dict[str, str], web_pid: int) -> None:
    n1, n8 = (60, 200) if args.quick else (300, 1000)
    direct = openai.AsyncOpenAI(api_key="sk-proj-direct-bench", base_url=f"{sandbox}/openai/v1", max_retries=0)
    via = {
        "credits": openai.AsyncOpenAI(api_key=tokens["credits"], base_url=f"{niyra}/v1", max_retries=0),
        "byok": openai.AsyncOpenAI(api_key=tokens["byok"], base_url=f"{niyra}/v1", max_retries=0),
    }
    for client in (direct, *via.values()):  # warm up connections, caches, pools
        await run_load(chat_call(client, stream=False), concurrency=8, requests=80, max_seconds=20)

    if "latency" in args.phases:
        await latency_phase(args, direct, via, n1, n8)
    if "throughput" in args.phases:
        await throughput_phase(args, via)
    if "slow" in args.phases:
        await slow_phase(sandbox, niyra, tokens, web_pid)


async def latency_phase(
    args: argparse.Namespace, direct: openai.AsyncOpenAI, via: dict[str, openai.AsyncOpenAI], n1: int, n8: int
) -> None:
    print("\n## Added latency (openai SDK, same call direct vs through Niyra), ms")
    print(
        "| path | stream | conc. | direct p50 | direct p99 | Niyra p50 | Niyra p99 | added p50 | added p99 | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for stream in (False, True):
        for concurrency, count in ((1, n1), (8, n8)):
            base = await run_load(
                chat_call(direct, stream=stream), concurrency=concurrency, requests=count, max_seconds=args.max_seconds
            )
            for path, client in via.items():
                got = await run_load(
                    chat_call(client, stream=stream),
                    concurrency=concurrency,
                    requests=count,
                    max_seconds=args.max_seconds,
                )
                print(
                    f"| {path} | {'yes' if stream else 'no'} | {concurrency} | {base.pct(50):.2f} | {base.pct(99):.2f} "
                    f"| {got.pct(50):.2f} | {got.pct(99):.2f} | {got.pct(50) - base.pct(50):.2f} "
                    f"| {got.pct(99) - base.pct(99):.2f} | {got.errors} |"
                )


async def throughput_phase(args: argparse.Namespace, via: dict[str, openai.AsyncOpenAI]) -> None:
    print("\n## Throughput (credits path, non-streaming: hold + provider call + settle + log)")
    print("| concurrency | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for concurrency in (8, 64):
        count = 600 if args.quick else 3000
        got = await run_load(
            chat_call(via["credits"], stream=False),
            concurrency=concurrency,
            requests=count,
            max_seconds=args.max_seconds,
        )
        print(
            f"| {concurrency} | {len(got.latencies)} | {got.rps:.0f} | {got.pct(50):.1f} "
            f"| {got.pct(99):.1f} | {got.errors} |"
        )


async def slow_phase(sandbox: str, niyra: str, tokens: dict[str, str], web_pid: int) -> None:
    """A raw aiohttp client here: at 500 concurrent calls the openai SDK's own CPU cost (~4 ms a
    call) would be the bottleneck and hide the server's."""
    import aiohttp

    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 16}
    print("\n## 500 concurrent calls, each 2 s at the provider (BYOK key with `slow2000`, aiohttp client)")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        def call(url: str, token: str) -> Callable[[], Awaitable[None]]:
            async def post() -> None:
                async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}")

            return post

        direct = await run_load(
            call(f"{sandbox}/openai/v1/chat/completions", "sk-proj-slow2000-direct"),
            concurrency=500,
            requests=500,
            max_seconds=60,
        )
        got = await run_load(
            call(f"{niyra}/v1/chat/completions", tokens["slow"]), concurrency=500, requests=500, max_seconds=60
        )
    print(f"direct to the sandbox: wall {direct.wall:.2f} s, errors {direct.errors}")
    print(
        f"through Niyra: completed {len(got.latencies)}/500, errors {got.errors}, wall {got.wall:.2f} s, "
        f"p50 {got.pct(50):.0f} ms, p99 {got.pct(99):.0f} ms, web peak RSS {peak_rss_mb(web_pid):.0f} MB"
        + (f", errors by kind {got.error_kinds}" if got.errors else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap per measurement")
    parser.add_argument(
        "--phases", default="latency,throughput,slow", help="comma-separated: latency, throughput, slow"
    )
    args = parser.parse_args()
    args.phases = set(args.phases.split(","))

    sandbox_port, web_port = free_port(), free_port()
    sandbox_url, niyra_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{web_port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "NIYRA_", "DATABASE_", "REDIS_"))},
        "DJANGO_SETTINGS_MODULE": "niyra.settings.production",
        "NIYRA_READ_DOTENV": "0",
        "DEBUG": "False",
        "SECURE_SSL_REDIRECT": "False",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "NIYRA_ENCRYPTION_KEYS": "bench:" + base64.b64encode(os.urandom(32)).decode(),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "REDIS_URL": "redis://127.0.0.1:6379/9",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ANTHROPIC_API_KEY": "sk-ant-platform-bench",
        "OPENAI_API_KEY": "sk-proj-platform-bench",
        "EMAIL_URL": "consolemail://",
        "NIYRA_PUBLIC_URL": "http://127.0.0.1",
        "ANTHROPIC_BASE_URL": f"{sandbox_url}/anthropic",
        "OPENAI_BASE_URL": f"{sandbox_url}/openai/v1",
        "LOG_LEVEL": "WARNING",
        "PORT": str(web_port),
        "WEB_CONCURRENCY": str(args.workers),
        "DB_POOL_MAX_SIZE": "40",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "sandbox", "--port", str(sandbox_port)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
            )
        )
        wait_http(f"{sandbox_url}/_sandbox/log")
        tokens = setup_database(env)
        web = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "niyra.asgi:application",
                "--config",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{web_port}",
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        processes.append(web)
        wait_http(f"{niyra_url}/healthz")
        print(
            f"# Routing benchmark — {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} CPUs, "
            f"gunicorn workers={args.workers}, PostgreSQL, sandbox on loopback"
        )
        asyncio.run(measure(args, sandbox_url, niyra_url, tokens, web.pid))
        print(f"\nreconcile_ledger: {reconcile(env)}")
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
