"""Which async HTTP client for the gateway's upstream call (issue 13): aiohttp's ClientSession
or httpx2's AsyncClient, against the same provider sandbox, interleaved in rounds.

For each client and each call shape — a non-streamed chat completion, and a 500-token stream
read chunk by chunk as the gateway relays it — 64 concurrent callers for ``--seconds``:
requests/s and this process's CPU per request (the client's own cost: the sandbox runs in its
own process, started through ``benchmarks/gateway.py --serve-sandbox`` so it streams 500 tokens).
Every answer is checked (200, and the stream's ``[DONE]``).

    .venv/bin/python benchmarks/upstream_clients.py                 # 3 rounds, 5 s per measurement
    .venv/bin/python benchmarks/upstream_clients.py --rounds 1 --seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONCURRENCY = 64
KEY = "sk-proj-bench-upstream-client"
PROMPT = [{"role": "user", "content": "Say hello to the benchmark"}]
CALL = json.dumps({"model": "gpt-4.1-mini", "messages": PROMPT, "max_tokens": 16}).encode()
STREAM = json.dumps({"model": "gpt-4.1-mini", "messages": PROMPT, "max_tokens": 500, "stream": True}).encode()
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

Call = Callable[[], Awaitable[bool]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sandbox() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "gateway.py"), "--serve-sandbox", str(port), "--tree", str(ROOT)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_sandbox/log", timeout=1):  # noqa: S310 - loopback
                return process, url
        except urllib.error.HTTPError:
            return process, url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the sandbox did not start")


def aiohttp_calls(session: aiohttp.ClientSession, url: str) -> dict[str, Call]:
    async def call() -> bool:
        async with session.post(url, data=CALL, headers=HEADERS) as response:
            body = await response.read()
            return response.status == 200 and b'"choices"' in body

    async def stream() -> bool:
        tail = b""
        async with session.post(url, data=STREAM, headers=HEADERS) as response:
            async for chunk in response.content.iter_any():
                tail = chunk
            return response.status == 200 and b"[DONE]" in tail[-64:]

    return {"call": call, "stream": stream}


def httpx2_calls(client: httpx2.AsyncClient, url: str) -> dict[str, Call]:
    async def call() -> bool:
        response = await client.post(url, content=CALL, headers=HEADERS)
        return response.status_code == 200 and b'"choices"' in response.content

    async def stream() -> bool:
        tail = b""
        async with client.stream("POST", url, content=STREAM, headers=HEADERS) as response:
            async for chunk in response.aiter_raw():
                tail = chunk
            return response.status_code == 200 and b"[DONE]" in tail[-64:]

    return {"call": call, "stream": stream}


async def closed_loop(call: Call, seconds: float) -> tuple[int, int, float, float]:
    """(ok, errors, wall s, CPU s of this process) for CONCURRENCY callers until the deadline."""
    ok = errors = 0
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal ok, errors
        while time.monotonic() < deadline:
            try:
                good = await call()
            except (aiohttp.ClientError, httpx2.HTTPError, TimeoutError):
                good = False
            ok, errors = (ok + 1, errors) if good else (ok, errors + 1)

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(CONCURRENCY))), seconds + 60)
    return ok, errors, time.perf_counter() - started, time.process_time() - cpu


async def run(url: str, rounds: int, seconds: float) -> dict[tuple[str, str], list[tuple[float, float, int]]]:
    endpoint = f"{url}/openai/v1/chat/completions"
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session,
        httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=CONCURRENCY),
            timeout=httpx2.Timeout(60.0),
        ) as client,
    ):
        clients = {"aiohttp": aiohttp_calls(session, endpoint), "httpx2": httpx2_calls(client, endpoint)}
        for calls in clients.values():  # warm-up: open the pools
            for call in calls.values():
                await closed_loop(call, 0.5)
        for number in range(rounds):
            order = list(clients) if number % 2 == 0 else list(reversed(clients))
            for shape in ("call", "stream"):
                for name in order:
                    ok, errors, wall, cpu = await closed_loop(clients[name][shape], seconds)
                    results.setdefault((name, shape), []).append((ok / wall, cpu * 1000 / max(ok, 1), errors))
                    print(
                        f"  round {number + 1} {shape:<6} {name:<7} {ok / wall:8.0f}/s  "
                        f"{cpu * 1000 / max(ok, 1):.3f} ms CPU/req  {errors} errors",
                        flush=True,
                    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measurement")
    args = parser.parse_args()
    one, five, fifteen = os.getloadavg()
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"# Upstream clients — {when} — {os.cpu_count()} CPUs, load {one:.2f} {five:.2f} {fifteen:.2f}")
    print(f"# aiohttp {aiohttp.__version__}, httpx2 {httpx2.__version__}, concurrency {CONCURRENCY}")
    sandbox, url = start_sandbox()
    try:
        results = asyncio.run(run(url, args.rounds, args.seconds))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=15)
    print(f"\n| client | shape | req/s (median of {args.rounds}) | client CPU ms/req | errors |")
    print("|---|---|---:|---:|---:|")
    failed = 0
    for (name, shape), runs in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
        failed += sum(r[2] for r in runs)
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"| {name} | {shape} | {rate:.0f} | {cpu:.3f} | {sum(r[2] for r in runs)} |")
    one, five, fifteen = os.getloadavg()
    print(f"\nload average after: {one:.2f} {five:.2f} {fifteen:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
