"""The OAuth refresh daemon at scale: 100,000 connections, 2,000 of them due.

1. **Tick.** The beat task's selection query alone (best of 5), its plan (EXPLAIN ANALYZE: it
   must use `oauth_connection_due_idx`), then the whole tick — query, purge of old connect
   flows, and 2,000 refresh tasks published to Redis. Target: under 2 s.
   The tick runs here with no worker consuming yet, as beat runs it in its own process.
2. **Refresh.** Then a real Celery worker (`celery -A niyra worker --concurrency 2`: two
   prefork worker processes) consumes those tasks and refreshes every due connection against
   the provider sandbox (served from a thread of this process, rotating refresh tokens). Timed
   from the first token request the sandbox sees until the last due row is committed (the
   worker's start-up is not counted). Target: all within 60 s.
3. **Checks.** The sandbox saw exactly one refresh per refresh token, all answered 200 (no
   grant revoked); every due row moved past the window; no other row was touched.

The database, `niyra_bench_refresh` on 127.0.0.1, is dropped and recreated every run; the
broker is Redis database 12 (flushed). The worker is started and stopped by this script; the
refresh phase is bounded by `--timeout` (default 120 s).

    .venv/bin/python benchmarks/refresh.py [--connections 100000] [--due 2000] [--timeout 120]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DB_NAME = "niyra_bench_refresh"
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/12"
INTEGRATION = "bench"
CLIENT_ID = "bench-client"  # no behaviour words: a normal, rotating client with 1 h tokens
REDIRECT_URI = "http://127.0.0.1/oauth/callback/bench"
BATCH = 5_000


def _psql(sql: str, dbname: str = DB_NAME) -> None:
    import psycopg

    with psycopg.connect(dbname=dbname, autocommit=True, **PG) as conn:  # type: ignore[arg-type]
        conn.execute(sql)  # type: ignore[arg-type]


def environment(sandbox_url: str) -> dict[str, str]:
    """What this process and the worker share: database, broker, keyring, the one integration."""
    return {
        "DJANGO_SETTINGS_MODULE": "niyra.settings.test",  # DEBUG off, test placeholders for the rest
        "NIYRA_READ_DOTENV": "0",
        "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{DB_NAME}",
        "REDIS_URL": REDIS_URL,
        "NIYRA_ENCRYPTION_KEYS": "bench:" + base64.b64encode(os.urandom(32)).decode(),
        "OAUTH_INTEGRATION_NAMES": INTEGRATION,
        "OAUTH_BENCH_CLIENT_ID": CLIENT_ID,
        "OAUTH_BENCH_CLIENT_SECRET": "secret-" + CLIENT_ID,  # the sandbox's rule
        "OAUTH_BENCH_AUTHORIZE_URL": f"{sandbox_url}/oauth/authorize",
        "OAUTH_BENCH_TOKEN_URL": f"{sandbox_url}/oauth/token",
        "OAUTH_BENCH_REVOKE_URL": f"{sandbox_url}/oauth/revoke",
        "LOG_LEVEL": "WARNING",
    }


def seed(sandbox: Any, *, connections: int, due: int) -> set[int]:
    """`connections` users with one connection each; `due` of them hold real sandbox grants and
    expire inside the tick's window, the rest expire later (2% of those need a reconnect).
    Rows are bulk-inserted (the services' per-row audit would dominate the set-up); tokens are
    sealed with the keyring exactly as the services seal them. Returns the due ids."""
    from authlib.common.security import generate_token
    from authlib.oauth2.rfc7636 import create_s256_code_challenge
    from django.db import connections as db_connections
    from django.utils import timezone

    from accounts.models import User
    from connections.models import (
        ConnectionStatus,
        OAuthConnection,
        oauth_access_token_purpose,
        oauth_refresh_token_purpose,
    )
    from core.crypto import get_keyring
    from sandbox import parse_behaviour

    keyring = get_keyring()
    rng = random.Random(6)
    now = timezone.now()
    behaviour = parse_behaviour(CLIENT_ID)
    due_positions = set(rng.sample(range(connections), due))
    for start in range(0, connections, BATCH):
        stop = min(start + BATCH, connections)
        users = User.objects.bulk_create(
            [
                User(email=f"bench{i}@example.com", username=f"bench{i}@example.com", password="!")  # noqa: S106 - unusable
                for i in range(start, stop)
            ]
        )
        rows = []
        for i, user in zip(range(start, stop), users, strict=True):
            if i in due_positions:  # a real grant: the worker will refresh it
                verifier = generate_token(64)
                code = sandbox.oauth.issue_code(CLIENT_ID, REDIRECT_URI, create_s256_code_challenge(verifier), "mail")
                tokens = sandbox.oauth.exchange_code(CLIENT_ID, code, REDIRECT_URI, verifier, behaviour)
                access, refresh = tokens["access_token"], tokens["refresh_token"]
                expires_at = now + timedelta(seconds=rng.uniform(30, 400))  # window: 300 + 120 s
                status = ConnectionStatus.ACTIVE
            else:
                access, refresh = "sbx_at_placeholder_" + generate_token(16), "sbx_rt_placeholder_" + generate_token(16)
                expires_at = now + timedelta(seconds=rng.uniform(600, 86_400))
                status = ConnectionStatus.NEEDS_REAUTH if rng.random() < 0.02 else ConnectionStatus.ACTIVE
            rows.append(
                OAuthConnection(
                    user=user,
                    integration=INTEGRATION,
                    status=status,
                    access_token_ciphertext=keyring.encrypt(
                        access, purpose=oauth_access_token_purpose(user_id=user.pk, integration=INTEGRATION)
                    ),
                    refresh_token_ciphertext=keyring.encrypt(
                        refresh, purpose=oauth_refresh_token_purpose(user_id=user.pk, integration=INTEGRATION)
                    ),
                    encryption_key_id=keyring.primary_kid,
                    scopes="mail",
                    expires_at=expires_at,
                    token_issued_at=expires_at - timedelta(hours=1),
                    connected_at=now - timedelta(days=1),
                )
            )
        OAuthConnection.objects.bulk_create(rows)
    due_ids = set(
        OAuthConnection.objects.filter(user__email__in=[f"bench{i}@example.com" for i in due_positions]).values_list(
            "pk", flat=True
        )
    )
    db_connections.close_all()
    _psql("VACUUM ANALYZE")
    return due_ids


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    worker = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/celery"),
            "-A",
            "niyra",
            "worker",
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"bench-refresh-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while b" ready." not in log_path.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the Celery worker did not start; see {log_path}")
        time.sleep(0.2)
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)  # its own session: the worker and its two children
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=2_000)
    parser.add_argument("--timeout", type=float, default=120.0, help="Bound on the refresh phase (seconds).")
    args = parser.parse_args()
    if not 0 < args.due <= args.connections:
        sys.exit("--due must be between 1 and --connections")

    from sandbox import SandboxServer

    sandbox = SandboxServer(log_maxlen=args.due * 4).start()  # served by a thread of this process
    env = environment(sandbox.url)
    os.environ.update(env)
    _psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)", dbname="postgres")
    _psql(f"CREATE DATABASE {DB_NAME}", dbname="postgres")
    import django

    django.setup()
    import redis
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from connections.models import OAuthConnection
    from connections.oauth import refresh_window
    from connections.selectors import connection_ids_due, connections_due
    from connections.tasks import oauth_refresh_tick
    from core.crypto import get_keyring

    redis.Redis.from_url(REDIS_URL).flushdb()
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    due_ids = seed(sandbox, connections=args.connections, due=args.due)
    print(f"seeded {args.connections:,} connections ({len(due_ids):,} due) in {time.perf_counter() - started:.1f} s")

    # 1. The tick's query and plan.
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        selected = connection_ids_due()
        samples.append(time.perf_counter() - t0)
    assert set(selected) == due_ids, (len(selected), len(due_ids))
    plan = connections_due().values_list("pk", flat=True).explain(analyze=True)
    print(
        f"\ntick selection query ({len(selected):,} of {args.connections:,} rows): "
        f"best {min(samples) * 1000:.1f} ms, median {statistics.median(samples) * 1000:.1f} ms"
    )
    print("plan:\n  " + plan.replace("\n", "\n  "))
    assert "oauth_connection_due_idx" in plan, "the tick's query does not use the partial index"
    before = {
        pk: (bytes(a), bytes(r))
        for pk, a, r in OAuthConnection.objects.values_list("pk", "access_token_ciphertext", "refresh_token_ciphertext")
    }
    old_refresh_tokens = {
        pk: get_keyring().decrypt(r, purpose=f"niyra:v1:oauth_refresh:{uid}:{INTEGRATION}")
        for pk, uid, r in OAuthConnection.objects.filter(pk__in=due_ids).values_list(
            "pk", "user_id", "refresh_token_ciphertext"
        )
    }
    connection.close()

    # 2. The whole tick, as beat runs it in its own process (no worker consumes yet), then a
    #    worker with two processes refreshing everything it queued.
    t0 = time.perf_counter()
    queued = oauth_refresh_tick()
    tick_seconds = time.perf_counter() - t0
    assert queued == len(due_ids)
    print(f"\ntick (query + purge + {queued:,} tasks published to Redis): {tick_seconds:.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        worker = start_worker(env, Path(tmp) / "worker.log")  # consumes as soon as it is ready
        try:
            cutoff = time.perf_counter() + args.timeout
            remaining = len(due_ids)
            window = refresh_window()
            while remaining and time.perf_counter() < cutoff:
                time.sleep(0.05)
                remaining = OAuthConnection.objects.filter(
                    pk__in=due_ids, expires_at__lt=timezone.now() + window
                ).count()
            finished_at = time.time()
            worker_log = (Path(tmp) / "worker.log").read_text()
        finally:
            stop_worker(worker)
    if remaining:
        print(worker_log[-3000:])
        sys.exit(f"{remaining} due connection(s) still unrefreshed after {args.timeout:.0f} s")
    requests = [r for r in sandbox.log.records() if r["grant_type"] == "refresh_token"]
    first_at = min(r["at"] for r in requests)
    all_seconds = finished_at - first_at  # first token request -> every due row committed
    runtimes = [float(m) for m in re.findall(r"succeeded in ([0-9.]+)s", worker_log)]
    print(
        f"all {len(due_ids):,} due connections refreshed by 2 worker processes in {all_seconds:.2f} s "
        f"(first token request to last row committed; {len(due_ids) / all_seconds:.0f} refreshes/s)"
    )
    if runtimes:
        runtimes.sort()
        print(
            f"task run time (Celery's own measure, {len(runtimes):,} tasks): median "
            f"{statistics.median(runtimes) * 1000:.1f} ms, p95 {runtimes[int(len(runtimes) * 0.95)] * 1000:.1f} ms"
        )

    # 3. Checks.
    statuses = Counter(r["status"] for r in requests)
    per_token = Counter(r["refresh_token_id"] for r in requests)
    assert len(requests) == len(due_ids) and statuses == {200: len(due_ids)}, statuses
    assert max(per_token.values()) == 1
    assert all(sandbox.log.count_refresh(token) == 1 for token in old_refresh_tokens.values())
    after = {
        pk: (bytes(a), bytes(r))
        for pk, a, r in OAuthConnection.objects.values_list("pk", "access_token_ciphertext", "refresh_token_ciphertext")
    }
    changed = {pk for pk in before if before[pk] != after[pk]}
    assert changed == due_ids, (len(changed), len(due_ids))
    print(
        f"checks: {len(requests):,} refresh requests, one per refresh token, all 200; "
        f"only the {len(due_ids):,} due rows changed"
    )
    print(
        f"\ntargets: tick {tick_seconds:.2f} s (< 2 s: {'ok' if tick_seconds < 2 else 'MISSED'}); "
        f"all due refreshed in {all_seconds:.1f} s (< 60 s: {'ok' if all_seconds < 60 else 'MISSED'})"
    )
    sandbox.stop()
    _psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)", dbname="postgres")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
