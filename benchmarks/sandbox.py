"""Throughput of the provider sandbox on one core.

Starts the sandbox in a subprocess pinned to one CPU (``os.sched_setaffinity``), pins this
client process to the other CPUs when there are any, then fires small non-streaming requests
with an aiohttp client at concurrency 32 for a bounded time and prints requests/second and the
server's CPU use (if the server is below ~100% of its core, the client was the bottleneck).

    .venv/bin/python benchmarks/sandbox.py [--seconds 5] [--requests N] [--api anthropic]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAX_SECONDS = 10.0


def _pin(cpus: set[int]) -> bool:
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        return False
    return True


def serve(cpu: int | None) -> None:
    """Child process: pin, serve on a free loopback port, print the URL, run until killed."""
    if cpu is not None:
        _pin({cpu})
    from sandbox import SandboxServer

    def ready(server: SandboxServer) -> None:
        print(server.url, flush=True)

    SandboxServer(log_maxlen=10_000).serve_forever(on_ready=ready)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux); 0.0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


REQUESTS = {
    "anthropic": (
        "/anthropic/v1/messages",
        {"x-api-key": "sk-ant-api03-bench-0000", "anthropic-version": "2023-06-01"},
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        },
    ),
    "openai": (
        "/openai/v1/chat/completions",
        {"Authorization": "Bearer sk-proj-bench-0000"},
        {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Say hello."}]},
    ),
    "embeddings": (
        "/openai/v1/embeddings",
        {"Authorization": "Bearer sk-proj-bench-0000"},
        {"model": "text-embedding-3-small", "input": "hello benchmark", "encoding_format": "float"},
    ),
}


async def fire(url: str, api: str, concurrency: int, seconds: float, limit: int) -> tuple[int, float]:
    path, headers, payload = REQUESTS[api]
    body = json.dumps(payload).encode()
    headers = {**headers, "Content-Type": "application/json"}
    target = url + path
    done = 0
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, errors
            while done < limit and time.perf_counter() < deadline:
                async with session.post(target, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                done += 1

        # Warm up the connections before timing.
        await asyncio.gather(*(worker_once(session, target, body, headers) for _ in range(concurrency)))
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    if errors:
        print(f"warning: {errors} non-200 responses", file=sys.stderr)
    return done, elapsed


async def worker_once(session: aiohttp.ClientSession, target: str, body: bytes, headers: dict[str, str]) -> None:
    async with session.post(target, data=body, headers=headers) as resp:
        await resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration, capped at 10 s")
    parser.add_argument("--requests", type=int, default=1_000_000, help="stop after N requests")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--api", choices=sorted(REQUESTS), default="anthropic")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        serve(args.cpu)
        return

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu = cpus[0] if cpus else None
    cmd = [sys.executable, __file__, "--serve"]
    if server_cpu is not None:
        cmd += ["--cpu", str(server_cpu)]
    elif _which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        if not url.startswith("http://"):
            raise SystemExit(f"sandbox did not start (got {url!r})")
        if len(cpus) > 1:
            _pin(set(cpus[1:]))
        seconds = min(args.seconds, MAX_SECONDS)
        cpu_before = _cpu_seconds(child.pid)
        done, elapsed = asyncio.run(fire(url, args.api, args.concurrency, seconds, args.requests))
        server_cpu_s = _cpu_seconds(child.pid) - cpu_before
    finally:
        child.terminate()
        child.wait(5)
    rps = done / elapsed if elapsed else 0.0
    print(f"api={args.api} concurrency={args.concurrency} requests={done} seconds={elapsed:.2f}")
    print(f"requests/second: {rps:,.0f}")
    if server_cpu_s:
        busy = server_cpu_s / elapsed
        print(
            f"server CPU: {busy:.0%} of one core (pinned to cpu {server_cpu}); "
            f"capacity at 100%: ~{done / server_cpu_s:,.0f} req/s"
        )


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


if __name__ == "__main__":
    main()
