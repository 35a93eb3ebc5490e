"""Ledger throughput on PostgreSQL: hold+settle pairs per second, next to pgbench's ceiling.

For each case — one hot account, then 1,000 accounts — three timed phases, each bounded by
``--seconds`` (at most 20), all with the same number of concurrent clients:

1. ``pgbench`` running the shape of transaction the ledger uses (lock the account row, insert
   an entry, update the account; BEGIN … END), which is the ceiling PostgreSQL sets here;
2. the same SQL sent by a minimal Python client (psycopg, no Django): what a Python client
   costs on this machine, to tell that cost from ours;
3. our hold+settle pairs: ``credit_hold`` then ``credit_settle``, two transactions per pair.

After each of our phases the ``reconcile_ledger`` check must come back clean, or the run fails.
Clients are OS processes (``--clients`` of them, ``--threads`` threads each; default 32 x 1),
forked after Django is set up, each thread with its own connection. The database,
``niyra_bench_ledger`` on 127.0.0.1, is dropped and recreated every run.

    .venv/bin/python benchmarks/ledger.py [--seconds 10] [--clients 32] [--threads 1] [--only hot]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAX_SECONDS = 20.0
DB_NAME = "niyra_bench_ledger"
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}
SPREAD_ACCOUNTS = 1_000
HOLD_AMOUNT = 1_000  # millicredits per hold
SETTLE_AMOUNT = 600  # millicredits actually charged
START_BALANCE = 10**14  # nobody runs out during a run


# --- set-up -----------------------------------------------------------------------------------


def _psql(sql: str, dbname: str = DB_NAME) -> None:
    import psycopg

    with psycopg.connect(dbname=dbname, autocommit=True, **PG) as conn:  # type: ignore[arg-type]
        conn.execute(sql)  # type: ignore[arg-type]


def _setup_django() -> None:
    os.environ["DATABASE_URL"] = f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{DB_NAME}"
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ["REDIS_URL"] = ""
    # Each client keeps one connection for the whole run — what the pool would hand it too — and
    # a pool opened before the fork would be shared by every child, so: no pool here.
    os.environ["DB_POOL"] = "0"
    os.environ["DJANGO_SETTINGS_MODULE"] = "niyra.settings.test"  # generated dev secrets, DEBUG off
    import django

    django.setup()


def prepare() -> list[int]:
    """A fresh database, migrated; 1,000 funded accounts (through the services); pgbench's two
    tables beside them. Returns the users' ids."""
    _psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)", dbname="postgres")
    _psql(f"CREATE DATABASE {DB_NAME}", dbname="postgres")
    _setup_django()
    from django.core.management import call_command
    from django.db import connections

    from accounts.models import User
    from credits.services.ledger import credit_grant

    call_command("migrate", verbosity=0)
    users = User.objects.bulk_create(
        [User(email=f"bench{i}@example.com", username=f"bench{i}@example.com") for i in range(SPREAD_ACCOUNTS)]
    )
    for user in users:
        credit_grant(user=user, amount=START_BALANCE, reason="benchmark", idempotency_key="bench-seed")
    connections.close_all()  # no connection may be shared with the forked clients
    _psql(PGBENCH_TABLES)
    _psql("VACUUM ANALYZE")
    return [user.pk for user in users]


# --- the transaction shape, for pgbench and the plain Python client -------------------------

PGBENCH_TABLES = f"""
CREATE TABLE pgbench_ledger_account (id bigint PRIMARY KEY, balance bigint NOT NULL,
    reserved bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), CHECK (balance >= reserved));
CREATE TABLE pgbench_ledger_entry (id bigserial PRIMARY KEY, account_id bigint NOT NULL
    REFERENCES pgbench_ledger_account (id), amount bigint NOT NULL, balance_after bigint NOT NULL,
    created_at timestamptz NOT NULL);
CREATE INDEX ON pgbench_ledger_entry (account_id, created_at);
INSERT INTO pgbench_ledger_account (id, balance, reserved)
    SELECT g, {START_BALANCE}, 0 FROM generate_series(1, {SPREAD_ACCOUNTS}) AS g;
"""  # noqa: S608 - constants only
LOCK = "SELECT balance, reserved FROM pgbench_ledger_account WHERE id = {aid} FOR UPDATE"
INSERT = "INSERT INTO pgbench_ledger_entry (account_id, amount, balance_after, created_at) VALUES ({aid}, -1, 0, now())"
UPDATE = "UPDATE pgbench_ledger_account SET balance = balance - 1, updated_at = now() WHERE id = {aid}"


def run_pgbench(*, spread: bool, clients: int, seconds: float) -> float:
    """pgbench's transactions per second for the shape above."""
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not Path(pgbench).exists():
        sys.exit("pgbench not found (apt-get install postgresql-client)")
    aid = f"random(1, {SPREAD_ACCOUNTS})" if spread else "1"
    script = "\n".join(
        [f"\\set aid {aid}", "BEGIN;", *(f"{sql.format(aid=':aid')};" for sql in (LOCK, INSERT, UPDATE))]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
        file.write(script + "\nEND;\n")
    try:
        command = [pgbench, "-n", "-c", str(clients), "-j", "2", "-T", str(round(seconds)), "-f", file.name]
        command += ["-h", PG["host"], "-p", PG["port"], "-U", PG["user"], DB_NAME]
        output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(file.name)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    if not match:
        sys.exit(f"could not read pgbench's output:\n{output}")
    return float(match.group(1))


# --- clients ------------------------------------------------------------------------------------


def _plain_python_client(ids: list[int]) -> Callable[[int], None]:
    """The pgbench transaction from Python: psycopg, no Django (a baseline for the client cost)."""
    import random

    import psycopg

    conn = psycopg.connect(dbname=DB_NAME, **PG)  # type: ignore[arg-type]
    pick = random.Random().randint
    top = len(ids) if len(ids) > 1 else 1

    def one(n: int) -> None:
        aid = pick(1, top)
        for sql in (LOCK, INSERT, UPDATE):
            conn.execute(sql.format(aid="%s"), (aid,))  # type: ignore[arg-type]
        conn.commit()

    return one


def _ledger_client(ids: list[int]) -> Callable[[int], None]:
    """One hold+settle pair through the services, on a random one of ``ids``."""
    import random

    from accounts.models import User
    from credits.services.holds import credit_hold, credit_settle

    users = [User(pk=pk) for pk in ids]  # the services only need the id
    pick = random.Random().choice
    prefix = uuid.uuid4().hex[:12]

    def one(n: int) -> None:
        key = f"{prefix}-{n}"
        hold = credit_hold(user=pick(users), amount=HOLD_AMOUNT, idempotency_key=key)
        credit_settle(hold_id=hold.pk, actual_amount=SETTLE_AMOUNT, idempotency_key=key)

    return one


CLIENTS = {"plain": _plain_python_client, "ledger": _ledger_client}


def _client_thread(kind: str, ids: list[int], seconds: float, ready: Any, go: Any, latencies: list[float]) -> None:
    from django.db import connection

    try:
        one = CLIENTS[kind](ids)
        connection.ensure_connection()
        ready.release()
        go.wait()
        n = 0
        stop_at = time.perf_counter() + seconds
        while (began := time.perf_counter()) < stop_at:
            n += 1
            one(n)
            latencies.append(time.perf_counter() - began)
    finally:
        connection.close()


def _client_process(kind: str, ids: list[int], threads: int, seconds: float, ready: Any, go: Any, out: Any) -> None:
    latencies: list[float] = []
    workers = [
        threading.Thread(target=_client_thread, args=(kind, ids, seconds, ready, go, latencies)) for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(latencies)


@dataclass
class Measured:
    per_second: float
    p50_ms: float
    p99_ms: float


def run_clients(kind: str, ids: list[int], *, clients: int, threads: int, seconds: float) -> Measured:
    ctx = mp.get_context("fork")  # Django is set up once in the parent; no connection is open
    out, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
    procs = [
        ctx.Process(target=_client_process, args=(kind, ids, threads, seconds, ready, go, out)) for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    for _ in range(clients * threads):  # every client connected: start the clock
        if not ready.acquire(timeout=120):
            sys.exit("client processes did not start")
    go.set()
    latencies = sorted(value for _ in procs for value in out.get(timeout=seconds + 120))
    for proc in procs:
        proc.join()
    if not latencies:
        sys.exit("nothing completed (see the errors above)")
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    return Measured(len(latencies) / seconds, statistics.median(latencies) * 1000, p99 * 1000)


def reconcile_or_die(label: str) -> None:
    from django.db import connections

    from credits.selectors import ledger_mismatches

    mismatches = ledger_mismatches()
    connections.close_all()
    if mismatches:
        for mismatch in mismatches[:20]:
            print(f"  MISMATCH account {mismatch.account_id}: {'; '.join(mismatch.problems)}")
        sys.exit(f"reconcile failed after {label}: {len(mismatches)} account(s) disagree with the ledger")
    print(f"  reconcile_ledger after {label}: clean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help=f"per phase, at most {MAX_SECONDS:.0f}")
    parser.add_argument("--clients", type=int, default=32, help="client processes (and pgbench clients)")
    parser.add_argument("--threads", type=int, default=1, help="threads per client process")
    parser.add_argument("--only", choices=["hot", "spread"], help="run one case")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-Python baseline")
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    concurrency = args.clients * args.threads

    print(f"ledger benchmark: {concurrency} concurrent clients, {seconds:.0f}s per phase, {os.cpu_count()} CPUs")
    user_ids = prepare()
    reconcile_or_die("seeding")

    rows = []
    for case, ids in (("hot", user_ids[:1]), ("spread", user_ids)):
        if args.only and args.only != case:
            continue
        where = "1 hot account" if case == "hot" else f"{SPREAD_ACCOUNTS:,} accounts"
        tps = run_pgbench(spread=case == "spread", clients=concurrency, seconds=seconds)
        print(f"{where}: pgbench {tps:,.0f} tx/s")
        plain = None
        if not args.no_plain:
            plain = run_clients("plain", ids, clients=args.clients, threads=args.threads, seconds=seconds)
            print(f"{where}: plain psycopg client {plain.per_second:,.0f} tx/s (p50 {plain.p50_ms:.1f} ms)")
        ours = run_clients("ledger", ids, clients=args.clients, threads=args.threads, seconds=seconds)
        print(
            f"{where}: hold+settle {ours.per_second:,.0f} pairs/s = {2 * ours.per_second:,.0f} tx/s "
            f"(pair p50 {ours.p50_ms:.1f} ms, p99 {ours.p99_ms:.1f} ms)"
        )
        reconcile_or_die(case)
        rows.append((where, ours.per_second, tps, plain.per_second if plain else None))

    print("\nsummary — a pair (hold + settle) is two transactions; 'of pgbench' = pairs/s ÷ (pgbench tx/s ÷ 2)")
    print(f"{'case':<16} {'pairs/s':>8} {'pgbench tx/s':>13} {'of pgbench':>11} {'plain Python tx/s':>18}")
    for where, pairs, tps, plain_tps in rows:
        plain_text = f"{plain_tps:,.0f} ({plain_tps / tps:.0%})" if plain_tps else "-"
        print(f"{where:<16} {pairs:>8,.0f} {tps:>13,.0f} {pairs / (tps / 2):>10.0%} {plain_text:>18}")


if __name__ == "__main__":
    main()
