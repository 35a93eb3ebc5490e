"""Routing overhead, throughput and slow-call concurrency, against the sandbox, on PostgreSQL.

Runs the production web command (gunicorn + uvicorn workers, `gunicorn.conf.py`, DEBUG off)
in front of the provider sandbox, and drives both with the official async `openai` SDK:

1. added latency: the same SDK call made directly to the sandbox and through Niyra's
   OpenAI-compatible endpoint, p50/p99 at concurrency 1 and 8, on the credits (platform) and
   BYOK paths, streaming and not. Added = Niyra's percentile minus the direct one.
2. throughput at concurrency 8 and 64 (non-streaming, credits path: hold + settle per call).
3. 500 concurrent calls that each take 2 s at the provider: wall time, errors, and the peak
   memory (VmHWM) of the web process.

`--metrics-compare` runs instead a side-by-side comparison of the metrics' cost (issue 17): two
production web servers at once on the same database, one recording metrics as production does
(METRICS_ENABLED=True, multi-process mode, the exporter on METRICS_LISTEN), one with
METRICS_ENABLED=False. A light aiohttp client (raw posts of the same JSON; the SDK's own few ms
of CPU per call would compete with the servers for the same cores) measures the added latency on
both and on the sandbox directly, interleaved in rounds so drift hits all alike, and charges
each server's CPU (master and workers, from /proc) to the requests it answered. At the end it
scrapes the exporter once and checks it counted every call made to the "on" server, and that
the "off" server's metric files counted none.

Everything is on loopback and bounded (each phase stops after a fixed number of requests or
`--max-seconds`). At the end `reconcile_ledger` must be clean.

    .venv/bin/python benchmarks/routing.py [--quick] [--workers 1]
    .venv/bin/python benchmarks/routing.py --metrics-compare --workers 2 [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median

import aiohttp
import openai
import psycopg
import redis
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

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


def wait_http(url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before {url} answered")
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
    name = env["DATABASE_URL"].rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
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


# --- Metrics on and off, side by side (issue 17) ---------------------------------------------

COMPARE_BODIES = {
    False: json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": 16}).encode(),
    True: json.dumps(
        {
            "model": MODEL,
            "messages": PROMPT,
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode(),
}
ROUTED_CALLS = "niyra_routed_calls_total"


@dataclass
class WebServer:
    """One production web command of the comparison: where it answers and where its figures go."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    metrics_dir: str
    metrics_listen: str
    answered: int = 0  # calls it answered with any HTTP status (the exporter must count each)


@dataclass
class Sample:
    """One measurement: the client's view, and the CPU its server spent on it."""

    stats: Stats
    cpu: float
    requests: int


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of a gunicorn master and its workers (its children), all threads."""
    tick = os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for each in (pid, *map(int, children)):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def aiohttp_session() -> aiohttp.ClientSession:
    """A session per measurement: a kept-alive connection left idle while the other server is
    measured could be closed by its server (keepalive 5 s) just as the client reuses it."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60))


async def compare_measure(
    url: str,
    token: str,
    *,
    stream: bool,
    concurrency: int,
    requests: int,
    max_seconds: float,
    server: WebServer | None = None,
) -> Sample:
    """The same raw JSON post the SDK would send; a 200 must carry the reply (or end `[DONE]`)."""
    body, headers = COMPARE_BODIES[stream], {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp_session() as session:

        async def post() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
            if server is not None:
                server.answered += 1
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            if (b"[DONE]" not in payload[-32:]) if stream else (b'"choices"' not in payload):
                raise RuntimeError("200 without the reply")

        before = server_cpu_seconds(server.process.pid) if server else 0.0
        stats = await run_load(post, concurrency=concurrency, requests=requests, max_seconds=max_seconds)
        cpu = server_cpu_seconds(server.process.pid) - before if server else 0.0
    return Sample(stats, cpu, len(stats.latencies) + stats.errors)


def pooled(samples: list[Sample]) -> Stats:
    return Stats(
        [x for s in samples for x in s.stats.latencies],
        sum(s.stats.errors for s in samples),
        sum(s.stats.wall for s in samples),
    )


def cpu_per_request(samples: list[Sample]) -> float:
    """Server CPU ms per request over `samples`."""
    return sum(s.cpu for s in samples) / sum(s.requests for s in samples) * 1000


def routed_calls_in(metrics_dir: str) -> float:
    """Routed calls counted in a server's multi-process files (read here, as its exporter would)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    return sum(
        sample.value for family in registry.collect() for sample in family.samples if sample.name == ROUTED_CALLS
    )


async def metrics_compare(
    args: argparse.Namespace, sandbox: str, servers: dict[str, WebServer], tokens: dict[str, str]
) -> bool:
    """Rounds of: for each (stream, concurrency), the sandbox directly, then each path on both
    servers back to back (which goes first alternates by round). Added latency is a server's
    percentile minus the direct one over all rounds; Δ = on - off, also per round (the spread of
    those is the noise to judge Δ against). Returns whether the sanity checks passed."""
    n1, n8, rounds = (30, 80, 2) if args.quick else (args.calls_c1, args.calls_c8, args.rounds)
    paths = ("credits", "byok")
    direct_url, niyra_path = f"{sandbox}/openai/v1/chat/completions", "/v1/chat/completions"
    cells = [(stream, concurrency, count) for stream in (False, True) for concurrency, count in ((1, n1), (8, n8))]
    samples: dict[tuple[str, str, bool, int], list[Sample]] = {}
    client_cpu = time.process_time()
    load_before = os.getloadavg()

    for server in servers.values():  # warm up connections, caches, pools, both paths
        for path in paths:
            for stream in (False, True):
                await compare_measure(
                    server.url + niyra_path,
                    tokens[path],
                    stream=stream,
                    concurrency=8,
                    requests=40,
                    max_seconds=20,
                    server=server,
                )
    await compare_measure(direct_url, "sk-proj-direct-bench", stream=False, concurrency=8, requests=40, max_seconds=20)

    started = time.monotonic()
    for number in range(rounds):
        order = ("on", "off") if number % 2 == 0 else ("off", "on")
        for stream, concurrency, count in cells:
            measured = functools.partial(
                compare_measure, stream=stream, concurrency=concurrency, requests=count, max_seconds=args.max_seconds
            )
            samples.setdefault(("direct", "direct", stream, concurrency), []).append(
                await measured(direct_url, "sk-proj-direct-bench")
            )
            for path in paths:
                for name in order:
                    samples.setdefault((name, path, stream, concurrency), []).append(
                        await measured(servers[name].url + niyra_path, tokens[path], server=servers[name])
                    )
        print(f"round {number + 1}/{rounds} done at {time.monotonic() - started:.0f} s", file=sys.stderr)
    elapsed, client_cpu = time.monotonic() - started, time.process_time() - client_cpu
    load_after = os.getloadavg()

    print(
        f"\n## Metrics on vs off (issue 17): {rounds} rounds, {n1} calls at c=1 and {n8} at c=8 per cell "
        f"and round, aiohttp client, {elapsed:.0f} s; load average {load_before[0]:.2f} at the start, "
        f"{load_after[0]:.2f} at the end"
    )
    print(
        "| path | stream | conc. | direct p50 | added p50 off / on | Δ p50 (per round: median [min, max]) "
        "| added p99 off / on | Δ p99 | server CPU ms/req off / on | on ÷ off | req/s off / on | errors off / on |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for stream, concurrency, _ in cells:
        direct = pooled(samples[("direct", "direct", stream, concurrency)])
        for path in paths:
            off_samples, on_samples = (samples[(name, path, stream, concurrency)] for name in ("off", "on"))
            off, on = pooled(off_samples), pooled(on_samples)
            cpu = {"off": cpu_per_request(off_samples), "on": cpu_per_request(on_samples)}
            per_round = [b.stats.pct(50) - a.stats.pct(50) for a, b in zip(off_samples, on_samples, strict=True)]
            rates = f"{off.rps:.0f} / {on.rps:.0f}" if concurrency > 1 else "—"
            print(
                f"| {path} | {'yes' if stream else 'no'} | {concurrency} | {direct.pct(50):.2f} "
                f"| {off.pct(50) - direct.pct(50):.2f} / {on.pct(50) - direct.pct(50):.2f} "
                f"| {on.pct(50) - off.pct(50):+.2f} ({median(per_round):+.2f} [{min(per_round):+.2f}, "
                f"{max(per_round):+.2f}]) "
                f"| {off.pct(99) - direct.pct(99):.2f} / {on.pct(99) - direct.pct(99):.2f} "
                f"| {on.pct(99) - off.pct(99):+.2f} | {cpu['off']:.2f} / {cpu['on']:.2f} "
                f"| {cpu['on'] / cpu['off']:.3f} | {rates} | {off.errors} / {on.errors} |"
            )
    runs_of = {name: [runs for key, runs in samples.items() if key[0] == name] for name in servers}
    every = {name: [sample for runs in runs_of[name] for sample in runs] for name in servers}
    by_round = [
        cpu_per_request([runs[number] for runs in runs_of["on"]])
        / cpu_per_request([runs[number] for runs in runs_of["off"]])
        for number in range(rounds)
    ]
    total_requests = sum(s.requests for runs in samples.values() for s in runs)
    cpu_off, cpu_on = cpu_per_request(every["off"]), cpu_per_request(every["on"])
    print(
        f"\nServer CPU over all cells: off {cpu_off:.3f} ms/req ({sum(s.requests for s in every['off'])} requests), "
        f"on {cpu_on:.3f} ms/req ({sum(s.requests for s in every['on'])}); on ÷ off {cpu_on / cpu_off:.3f}"
        f" (per round: median {median(by_round):.3f} [{min(by_round):.3f}, {max(by_round):.3f}]). "
        f"Client CPU {client_cpu / total_requests * 1000:.2f} ms/req ({total_requests} requests, warm-up excluded)."
    )

    await asyncio.sleep(0.5)  # the last calls' books close after their last byte
    exporting = servers["on"]
    scrape_started = time.perf_counter()
    with urllib.request.urlopen(f"http://{exporting.metrics_listen}/metrics", timeout=10) as response:
        exposition = response.read()
    scrape_ms = (time.perf_counter() - scrape_started) * 1000
    counted, added = 0.0, dict[str, dict[str, float]]()
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            if sample.name == ROUTED_CALLS:
                counted += sample.value
            elif sample.name.startswith("niyra_routed_call_added_seconds_"):
                stream_label = sample.labels.get("stream", "")
                kind = sample.name.rsplit("_", 1)[1]
                if kind in ("sum", "count"):
                    added.setdefault(stream_label, {"sum": 0.0, "count": 0.0})[kind] += sample.value
    off_counted = routed_calls_in(servers["off"].metrics_dir)
    means = ", ".join(
        f"stream={label}: {v['sum'] / v['count'] * 1000:.2f} ms" for label, v in sorted(added.items()) if v["count"]
    )
    seen = []
    for stream in (False, True):  # the same figure as the client saw it: mean minus the direct mean, per cell
        weighted = count = 0.0
        for key, runs in samples.items():
            if key[0] == "on" and key[2] == stream:
                on, direct = pooled(runs), pooled(samples[("direct", "direct", stream, key[3])])
                weighted += len(on.latencies) * (mean(on.latencies) - mean(direct.latencies))
                count += len(on.latencies)
        seen.append(f"stream={str(stream).lower()}: {weighted / count * 1000:.2f} ms")
    checks_ok = counted == exporting.answered and off_counted == 0
    print(
        f"Exporter scrape (once, at the end): {len(exposition):,} bytes in {scrape_ms:.1f} ms; "
        f"{ROUTED_CALLS} = {counted:.0f}, calls answered by the 'on' server = {exporting.answered} "
        f"({'match' if counted == exporting.answered else 'MISMATCH'}); "
        f"the 'off' server's files counted {off_counted:.0f} routed calls "
        f"({'none, as expected' if off_counted == 0 else 'NOT OFF'}). "
        f"Its mean added latency (niyra_routed_call_added_seconds; Niyra's own time, warm-up calls "
        f"included): {means}; the client's mean added on the same server: {', '.join(seen)}."
    )
    return checks_ok


def web_start(env: dict[str, str], port: int, **extra: str) -> subprocess.Popen[bytes]:
    """The production web command on `port`."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "niyra.asgi:application",
            "--config",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env={**env, "PORT": str(port), **extra},
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap per measurement")
    parser.add_argument(
        "--phases", default="latency,throughput,slow", help="comma-separated: latency, throughput, slow"
    )
    parser.add_argument("--metrics-compare", action="store_true", help="metrics on vs off, instead of the phases")
    parser.add_argument("--rounds", type=int, default=6, help="--metrics-compare: interleaved rounds")
    parser.add_argument("--calls-c1", type=int, default=100, help="--metrics-compare: calls per cell at c=1")
    parser.add_argument("--calls-c8", type=int, default=240, help="--metrics-compare: calls per cell at c=8")
    parser.add_argument("--log-level", default="WARNING", help="the servers' LOG_LEVEL (production: INFO)")
    parser.add_argument("--database", default=DB_NAME, help="PostgreSQL database (dropped and recreated)")
    parser.add_argument("--redis-db", type=int, default=9, help="Redis database number (flushed)")
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
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ANTHROPIC_API_KEY": "sk-ant-platform-bench",
        "OPENAI_API_KEY": "sk-proj-platform-bench",
        "EMAIL_URL": "consolemail://",
        "NIYRA_PUBLIC_URL": "http://127.0.0.1",
        "ANTHROPIC_BASE_URL": f"{sandbox_url}/anthropic",
        "OPENAI_BASE_URL": f"{sandbox_url}/openai/v1",
        "LOG_LEVEL": args.log_level,
        "WEB_CONCURRENCY": str(args.workers),
        "DB_POOL_MAX_SIZE": "40",
    }
    processes: list[subprocess.Popen[bytes]] = []
    metrics_dirs: list[str] = []
    failed = False
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
        print(
            f"# Routing benchmark — {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} CPUs, "
            f"gunicorn workers={args.workers}, LOG_LEVEL={args.log_level}, PostgreSQL, sandbox on loopback"
        )
        if args.metrics_compare:
            # As production runs it (fly.toml): each server's processes share a directory of their
            # own; only the "on" server serves them.
            servers: dict[str, WebServer] = {}
            listen = f"127.0.0.1:{free_port()}"
            for name, enabled in (("on", "True"), ("off", "False")):
                port, directory = free_port(), tempfile.mkdtemp(prefix=f"niyra-bench-metrics-{name}-")
                metrics_dirs.append(directory)
                process = web_start(
                    env,
                    port,
                    METRICS_ENABLED=enabled,
                    METRICS_LISTEN=listen if name == "on" else "",
                    PROMETHEUS_MULTIPROC_DIR=directory,
                )
                processes.append(process)
                servers[name] = WebServer(name, process, f"http://127.0.0.1:{port}", directory, listen)
            for server in servers.values():  # two servers starting at once, on a shared machine
                wait_http(f"{server.url}/healthz", 120, server.process)
            wait_http(f"http://{listen}/metrics", 30, servers["on"].process)
            failed = not asyncio.run(metrics_compare(args, sandbox_url, servers, tokens))
        else:
            web = web_start(env, web_port)
            processes.append(web)
            wait_http(f"{niyra_url}/healthz")
            asyncio.run(measure(args, sandbox_url, niyra_url, tokens, web.pid))
        ledger = reconcile(env)
        failed = failed or not ledger.startswith("clean")
        print(f"\nreconcile_ledger: {ledger}")
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        for directory in metrics_dirs:
            shutil.rmtree(directory, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
