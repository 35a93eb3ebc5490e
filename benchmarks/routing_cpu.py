"""CPU per routed call, as a ratio to the SDK call it wraps: a figure that a busy machine barely moves.

Latency and throughput on a shared 2-vCPU machine swing with whatever else runs; CPU time per
call swings much less, and its ratio to the CPU of the bare SDK call, measured in the same
process a moment later, hardly at all. This drives Niyra's production ASGI application
(`niyra.asgi.application`: the real middleware, views, dispatcher, PostgreSQL) in-process,
without an HTTP server, for `-n` non-streaming `/v1/chat/completions` calls at concurrency 1
against the sandbox (in its own process), then makes the same call directly with the openai
SDK, and prints CPU ms per call for both and their ratio, for the credits and BYOK paths.

    .venv/bin/python benchmarks/routing_cpu.py [-n 400] [--profile out.txt]

`--profile` samples the routed calls with py-spy (GIL holders only) into a raw stack file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import routing as harness  # noqa: E402 - after the path is set

PROMPT = [{"role": "user", "content": "Say hello to the benchmark"}]


async def asgi_call(application: Any, token: str) -> None:
    body = json.dumps({"model": harness.MODEL, "messages": PROMPT, "max_tokens": 16}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    sent = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await application(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"routed call answered {status}")


async def cpu_ms_per_call(call: Callable[[], Awaitable[None]], n: int) -> float:
    for _ in range(min(50, n)):  # warm pools and caches
        await call()
    started = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - started) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=400, help="calls per measurement")
    parser.add_argument("--profile", help="write py-spy raw stacks of the routed calls here")
    args = parser.parse_args()

    harness.DB_NAME = "niyra_bench_routing_cpu"
    port = harness.free_port()
    sandbox = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "NIYRA_", "DATABASE_", "REDIS_"))},
        "DJANGO_SETTINGS_MODULE": "niyra.settings.production",
        "NIYRA_READ_DOTENV": "0",
        "DEBUG": "False",
        "SECURE_SSL_REDIRECT": "False",
        "SECRET_KEY": base64.b64encode(os.urandom(40)).decode(),
        "NIYRA_ENCRYPTION_KEYS": "bench:" + base64.b64encode(os.urandom(32)).decode(),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{harness.DB_NAME}",
        "REDIS_URL": "redis://127.0.0.1:6379/9",
        "ALLOWED_HOSTS": "127.0.0.1",
        "ANTHROPIC_API_KEY": "sk-ant-platform-bench",
        "OPENAI_API_KEY": "sk-proj-platform-bench",
        "EMAIL_URL": "consolemail://",
        "NIYRA_PUBLIC_URL": "http://127.0.0.1",
        "ANTHROPIC_BASE_URL": f"{sandbox}/anthropic",
        "OPENAI_BASE_URL": f"{sandbox}/openai/v1",
        "LOG_LEVEL": "WARNING",
    }
    sandbox_process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    try:
        harness.wait_http(f"{sandbox}/_sandbox/log")
        tokens = harness.setup_database(env)
        os.environ.update(env)
        asyncio.run(measure(args, sandbox, tokens))
    finally:
        sandbox_process.terminate()


async def measure(args: argparse.Namespace, sandbox: str, tokens: dict[str, str]) -> None:
    import httpx2
    import openai

    from niyra.asgi import application

    pool = httpx2.AsyncClient()

    async def direct() -> None:
        client = openai.AsyncOpenAI(
            api_key="sk-proj-direct-bench", base_url=f"{sandbox}/openai/v1", max_retries=0, http_client=pool
        )
        await client.chat.completions.create(model=harness.MODEL, messages=PROMPT, max_tokens=16)  # type: ignore[arg-type]

    print(f"# Routing CPU per call — {time.strftime('%Y-%m-%d %H:%M')} — load average {os.getloadavg()[0]:.1f}")
    print("| path | Niyra CPU ms/call | direct SDK CPU ms/call | ratio |")
    print("|---|---|---|---|")
    for path in ("credits", "byok"):
        routed = await cpu_ms_per_call(lambda path=path: asgi_call(application, tokens[path]), args.n)
        bare = await cpu_ms_per_call(direct, args.n)
        print(f"| {path} | {routed:.2f} | {bare:.2f} | {routed / bare:.2f} |")

    if args.profile:
        command = [str(ROOT / ".venv/bin/py-spy"), "record", "-p", str(os.getpid()), "-r", "250", "--gil"]
        spy = subprocess.Popen(
            [*command, "-f", "raw", "-o", args.profile],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.5)
        for _ in range(args.n):
            await asgi_call(application, tokens["credits"])
        spy.send_signal(2)
        spy.wait()
        print(f"py-spy stacks of {args.n} credits-path calls: {args.profile}")


if __name__ == "__main__":
    main()
