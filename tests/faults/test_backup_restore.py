"""A logical backup taken under load restores into a database whose books balance.

`pg_dump` (custom format, as docs/backup-restore.md takes it) of the test database while threads
move money through the credits services — holds placed, settled and voided, charges, grants —
then `pg_restore` into a fresh database on the same server (dropped afterwards). There,
`manage.py reconcile_ledger` (a subprocess whose DATABASE_URL is the restored database) finds no
mismatch, and the restored ledger is a clean cut of the live one: per account, exactly the
entries up to some point, no entry without its account, the database's own money rules
(triggers, CHECK constraints) and the migration history restored with the data.

What this guards: pg_dump reads every table in one snapshot, and every money rule writes its
entry, the balance and the reservation in one statement under the account's row lock
(credits/ledger_sql.py), so any snapshot balances. A rule that moved money in two transactions
(the entry, then the balance), or a backup made of tables copied at different moments, leaves a
restored database whose balances disagree with its entries — which is what reconcile_ledger
reports. It also fails if the schema stops restoring cleanly (`--exit-on-error`, one
transaction): a migration that pg_dump cannot reproduce makes every backup useless.

The client programs must be the server's major version (a newer pg_dump writes settings an
older server refuses on restore): `/usr/lib/postgresql/<major>/bin` (CI's system server), the
embedded package's (a fresh machine), or the ones on PATH.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db import connection

from core.errors import NiyraError
from credits.models import BillingAccount, CreditHold, HoldStatus, LedgerEntry
from credits.services.holds import credit_hold, credit_settle, credit_void
from credits.services.ledger import credit_charge, credit_grant
from scripts.local_postgres import client_program
from tests.conftest import REQUIRE_SERVICES
from tests.faults.conftest import assert_books_balance
from tests.faults.services import BASE_DIR, current_database_url

THREADS = 4
ACCOUNTS = 6
PROGRAM_TIMEOUT_SECONDS = 120  # a hang bound for pg_dump, pg_restore and the command


def server_major() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version_num')::int / 10000")
        return int(cursor.fetchone()[0])


def pg_program(name: str) -> str:
    """`name` (pg_dump, pg_restore) of the server's major version, or fail (CI) / skip."""
    major = server_major()
    candidates = [Path(f"/usr/lib/postgresql/{major}/bin/{name}"), client_program(name)]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if not candidate.is_file():
            continue
        version = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"\)\s+(\d+)", version)
        if found and int(found.group(1)) == major:
            return str(candidate)
    reason = f"no {name} of PostgreSQL {major} (looked at {', '.join(map(str, candidates))})"
    if REQUIRE_SERVICES:
        pytest.fail(f"NIYRA_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=PROGRAM_TIMEOUT_SECONDS, **kwargs)
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def with_database(url: str, name: str) -> str:
    """`url` with another database name (the host, a Unix socket directory included, kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def restored_database(transactional_db: None) -> Iterator[str]:
    """A fresh, empty database on the test's server, dropped afterwards: its URL."""
    name = f"{connection.settings_dict['NAME']}_restored"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield with_database(current_database_url(), name)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- The load ---------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Threads moving money on a few accounts through the credits services until stopped."""

    users: list[Any]
    stop: threading.Event = field(default_factory=threading.Event)
    done: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    unexpected: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def _work(self, index: int) -> None:
        rng = random.Random(index)
        open_holds: list[int] = []
        try:
            for step in itertools.count():
                if self.stop.is_set():
                    return
                user = self.users[rng.randrange(len(self.users))]
                key = f"t{index}-{step}"
                op = rng.choice(["hold", "hold", "settle", "void", "charge", "grant"])
                try:
                    if op == "hold":
                        open_holds.append(
                            credit_hold(user=user, amount=rng.randint(100, 5_000), idempotency_key=key).pk
                        )
                    elif op in ("settle", "void") and open_holds:
                        hold_id = open_holds.pop(rng.randrange(len(open_holds)))
                        if op == "void":
                            credit_void(hold_id=hold_id)
                        else:
                            credit_settle(hold_id=hold_id, actual_amount=rng.randint(0, 100), idempotency_key=key)
                    elif op == "charge":
                        credit_charge(user=user, category="tool_call", units=rng.randint(1, 5), idempotency_key=key)
                    elif op == "grant":
                        credit_grant(user=user, amount=rng.randint(1, 1_000), reason="load", idempotency_key=key)
                except NiyraError as exc:  # not enough credits: a refusal, nothing moved
                    op = exc.code
                with self.lock:
                    self.done[op] += 1
        except Exception as exc:  # reported by the test
            self.unexpected.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()  # this thread's own session

    def start(self) -> Ledger:
        self.threads = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(THREADS)]
        for thread in self.threads:
            thread.start()
        return self

    def operations(self) -> int:
        with self.lock:
            return sum(self.done.values())

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self.threads), "a ledger thread never returned"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ledger_rows(url: str) -> dict[int, list[tuple[int, int, int]]]:
    """account id -> its entries (id, amount, balance_after), in id order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT account_id, id, amount, balance_after FROM {LedgerEntry._meta.db_table} ORDER BY id"  # noqa: S608
        ).fetchall()
    accounts: dict[int, list[tuple[int, int, int]]] = {}
    for account_id, *entry in rows:
        accounts.setdefault(account_id, []).append(tuple(entry))  # type: ignore[arg-type]
    return accounts


def schema_rules(url: str) -> tuple[set[str], set[str], int]:
    """The database's own rules: user triggers, CHECK constraints, applied migrations."""
    with psycopg.connect(url) as conn:
        triggers = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
        checks = {r[0] for r in conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'c'")}
        migrations = conn.execute("SELECT count(*) FROM django_migrations").fetchone()
    return triggers, checks, int(migrations[0]) if migrations else 0


@pytest.mark.django_db(transaction=True)
def test_a_dump_taken_under_load_restores_with_balanced_books(
    make_account: Callable[..., Any], restored_database: str, tmp_path: Path
) -> None:
    pg_dump, pg_restore = pg_program("pg_dump"), pg_program("pg_restore")
    live = current_database_url()
    # Given accounts whose money moves in several threads at once
    users = [make_account(plan="free", credits_mc=50_000) for _ in range(ACCOUNTS)]
    ledger = Ledger(users).start()
    wait_until(lambda: ledger.operations() >= 20, "the load to get going")

    # When pg_dump takes a backup while it runs
    archive = tmp_path / "niyra.dump"
    entries_before = LedgerEntry.objects.count()
    during = ledger.operations()
    run([pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--file={archive}", f"--dbname={live}"])
    during = ledger.operations() - during
    ledger.finish()
    entries_after = LedgerEntry.objects.count()
    # and it is restored into a fresh database, in one transaction, stopping at any error
    run(
        [
            pg_restore,
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={restored_database}",
            str(archive),
        ]
    )

    # Then the load ran all along and the live books balance
    assert ledger.unexpected == []
    assert during > 0, "nothing moved while pg_dump ran"
    assert_books_balance()
    # and reconcile_ledger, run against the restored database, finds no mismatch
    env = {**os.environ, "DATABASE_URL": restored_database, "DJANGO_SETTINGS_MODULE": "niyra.settings.test"}
    report = run([sys.executable, "manage.py", "reconcile_ledger"], env=env, cwd=BASE_DIR).stdout
    assert f"Ledger reconciled: {BillingAccount.objects.count()} account(s), no mismatches." in report, report
    # and the restored ledger is a cut of the live one: per account, its first entries, unchanged
    restored, now = ledger_rows(restored_database), ledger_rows(live)
    assert entries_before <= sum(map(len, restored.values())) <= entries_after
    assert restored.keys() <= now.keys()
    for account_id, entries in restored.items():
        assert entries == now[account_id][: len(entries)], f"account {account_id} is not a prefix of the live one"
    with psycopg.connect(restored_database) as conn:
        orphans = conn.execute(
            f"SELECT count(*) FROM {LedgerEntry._meta.db_table} e "  # noqa: S608
            f"LEFT JOIN {BillingAccount._meta.db_table} a ON a.id = e.account_id WHERE a.id IS NULL"
        ).fetchone()
        open_holds = conn.execute(
            f"SELECT count(*) FROM {CreditHold._meta.db_table} WHERE status = %s",  # noqa: S608
            [HoldStatus.OPEN],
        ).fetchone()
    assert orphans == (0,)
    assert open_holds is not None and open_holds[0] > 0, "the backup should catch holds still open"
    # and the database's own money rules and the migration history came back with the data
    assert schema_rules(restored_database) == schema_rules(live)
