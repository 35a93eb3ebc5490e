"""Mixed traffic against the production web command, bounded, as a CI test (issue 8, "Load").

Runs `benchmarks/load.py` as a subprocess: gunicorn + uvicorn workers (`gunicorn.conf.py`,
DEBUG off) on a fresh PostgreSQL database and this run's Redis db, in front of the provider
sandbox; routed calls on the credits and the BYOK path, JSON and streaming, over both provider
adapters; key tests; ledger and balance reads. A short ramp up to 32 concurrent clients, then
the main phase (`NIYRA_LOAD_SECONDS`, default 60 s, as the issue asks) at the knee it found. The benchmark's last
line (`LOAD_RESULT {json}`) is what this test reads.

It proves that under sustained mixed load: no request gets a 5xx or loses its connection;
every answer is the one asked for (the key source of the path, a complete stream, a valid key);
the ledger reconciles; the database recorded exactly what the clients were answered (one
routed-call row per call, one settled charge per credits call, no hold left open, one audit
row per key test); every kind of request actually ran; and (issue 16, "Soak") nothing the web
processes hold grew over the main phase once warm: their open fds (besides their database and
Redis sockets), their database connections left idle, and, loosely, their memory. The sampling
and the rules are `benchmarks/soak.py`'s; none depends on the machine's speed.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

from tests.faults.services import current_database_url

pytestmark = [pytest.mark.redis, pytest.mark.load]

ROOT = Path(__file__).resolve().parents[2]
MAIN_SECONDS = float(os.environ.get("NIYRA_LOAD_SECONDS", "60"))
START_AND_CHECKS_BOUND = 240  # set-up, ramp and checks on a busy machine; a hang bound, not a speed check


def _postgres_server() -> str:
    """The test database's server (TCP, or the embedded server's socket), naming no database."""
    return urlunsplit(urlsplit(current_database_url())._replace(path=""))


def _run_load() -> tuple[dict[str, Any], str, int]:
    command = [
        sys.executable,
        "benchmarks/load.py",
        "--duration",
        str(MAIN_SECONDS),
        "--ramp",
        "2,8,32",
        "--step-seconds",
        "2",
        "--credits-users",
        "10",
        "--byok-users",
        "12",
        "--database",
        f"niyra_load_ci_{secrets.token_hex(4)}",
        "--postgres",
        _postgres_server(),
        "--redis-url",
        str(settings.REDIS_URL),
        "--drop-database",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=MAIN_SECONDS + START_AND_CHECKS_BOUND)
    except subprocess.TimeoutExpired:
        process.terminate()  # the benchmark stops its servers and drops its database on SIGTERM
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"benchmarks/load.py did not finish in time:\n{output[-4000:]}")
    results = [line for line in output.splitlines() if line.startswith("LOAD_RESULT ")]
    assert results, f"no LOAD_RESULT line (exit {process.returncode}):\n{output[-4000:]}"
    return json.loads(results[-1].removeprefix("LOAD_RESULT ")), output, process.returncode


def test_mixed_load_on_the_production_server_is_clean() -> None:
    # Given the production web command in front of the sandbox, and funded credits and BYOK users
    # When mixed traffic runs at the highest concurrency the ramp found worth it
    result, output, returncode = _run_load()

    # Then nothing failed on the server or on the wire
    report = f"errors by status:code {result.get('errors')}\n{output[-3000:]}"
    assert result["status_5xx"] == 0, report
    assert result["transport_errors"] == 0, report
    # and every answer was the one asked for, with no client error either
    assert result["check_failures"] == 0, report
    assert result["errors"] == {}, report

    # and the books balance, and agree with what the clients were told
    assert result["reconcile_clean"], result["reconcile"]
    assert result["db_ok"], result["db"]
    assert result["db"]["open holds"]["database"] == 0

    # and every kind of request ran, on both provider adapters
    assert result["requests"] > 0
    never_answered = sorted(kind for kind, figures in result["kinds"].items() if figures["ok"] == 0)
    assert never_answered == [], f"kinds with no successful request: {never_answered}"
    assert set(result["kinds"]) == {
        "credits_call",
        "credits_stream",
        "byok_call",
        "byok_stream",
        "key_test",
        "ledger",
        "balance",
    }
    assert set(result["endpoints"]) == {"/v1/chat/completions", "/api/llm/messages"}
    assert all(count > 0 for count in result["endpoints"].values())

    # and, after the main phase's warm-up, the web processes ended holding no more than they began
    # with: open fds (besides their database and Redis sockets), database connections that sat
    # idle (taken from a pool and never given back, or opened outside one), and RSS (loosely)
    resources = result["resources"]
    figures = {
        name: resources["trends"].get(name) for name in ("web.fds_besides_db_redis", "db.stale.web", "web.rss_mb")
    }
    verdicts = {verdict["metric"]: verdict["ok"] for verdict in resources["flat"].values()}
    assert verdicts == dict.fromkeys(figures, True), f"{resources['flat']}\n{figures}"

    assert result["ok"] and returncode == 0, output[-3000:]
