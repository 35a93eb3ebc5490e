"""Rotating the master key under load, step by step as docs/key-rotation.md says.

Two production web servers (gunicorn, one uvicorn worker each) serve routed BYOK calls on both
providers, and key saves, to clients that go to the other server when one refuses the
connection; a real Celery worker refreshes OAuth connections the whole time (the test plays beat,
queueing forced refreshes, so the worker writes freshly sealed tokens several times a second).
Each step of the doc is a rolling restart, as `fly secrets set` replaces machines: web server a
and the worker are stopped with SIGTERM and started again with the step's keyring, then web
server b.

    k1 -> k1,k2 (add) -> k2,k1 (make primary) -> reencrypt_secrets while the load runs -> k2 (drop)

What it proves: no call, key save or refresh fails at any point; afterwards every value of every
registered encrypted column opens with the final keyring alone and is sealed under `k2` (and its
key id column says so); and a log of every write to those columns (a trigger, installed for this
test) shows nothing was sealed with `k1` once every process had `k2` first. The one transport
failure tolerated is not about keys: uvicorn's shutdown closing a connection it accepted but had
not read yet (see `Load._post`).

The gateway's caller cache holds ProviderKey rows (ciphertext, never plaintext); the second test
shows that re-encryption evicts them, so even a process whose keyring lost `k1` without a
restart (which `fly secrets set` never does) could not use a stale `k1` ciphertext from its cache.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import httpx2
import pytest
from django.core.management import call_command
from django.db import connection as db_connection

from accounts.models import AuditEvent
from accounts.services import api_token_create
from byok.models import KeyStatus, ProviderKey
from byok.selectors import provider_key_plaintext
from connections import oauth
from connections.models import ConnectionStatus, OAuthAuthorizationRequest, OAuthConnection
from connections.services import connection_connect_start
from connections.tasks import oauth_connection_refresh
from core.crypto import Keyring, generate_key_spec
from core.encrypted_fields import encrypted_fields
from routing.gateway.auth import caller_authenticate
from sandbox import SandboxServer
from tests.connections.test_oauth_helpers import REDIRECT_BASE, connect, sandbox_integration, tokens_of
from tests.faults.conftest import PROMPT
from tests.faults.services import (
    START_TIMEOUT_SECONDS,
    RedisServer,
    WebServer,
    Worker,
    deployment_env,
    in_process_broker,
    private_redis,  # noqa: F401 - fixture
    refused_connection,
    wait_for,
)
from tests.routing.gateway.test_data_auth import GatewayLoop, counted_gateway

CALLERS = 3  # client threads making routed calls
USERS = 4  # BYOK users, each with an Anthropic and an OpenAI key
CONNECTIONS = 3  # OAuth connections the worker keeps refreshing
REFRESH_EVERY_SECONDS = 0.3  # one forced refresh of each connection this often
SAVE_EVERY_SECONDS = 2.0  # one key save (PUT /api/keys/anthropic) this often
SAVES_PER_USER = 9  # within the production key-check budget (10 saves an hour)
LOAD_SECONDS_PER_PHASE = 0.5  # load on the settled state between steps
# A killed or stopped worker's unacknowledged message comes back in seconds, not the hour.
TRANSPORT_OPTIONS = {"visibility_timeout": 5, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}


# --- Observing every write to an encrypted column ---------------------------------------------


_LOG_FUNCTION = """
CREATE FUNCTION rotation_test_log() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    col text;
    new_value bytea;
    old_value bytea;
BEGIN
    FOREACH col IN ARRAY TG_ARGV LOOP
        EXECUTE format('SELECT ($1).%I', col) INTO new_value USING NEW;
        IF TG_OP = 'UPDATE' THEN
            EXECUTE format('SELECT ($1).%I', col) INTO old_value USING OLD;
        END IF;
        IF length(new_value) > 2 AND (TG_OP = 'INSERT' OR new_value IS DISTINCT FROM old_value) THEN
            INSERT INTO rotation_test_writes (tbl, col, kid)
            VALUES (TG_TABLE_NAME, col, convert_from(substring(new_value FROM 3 FOR get_byte(new_value, 1)), 'UTF8'));
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
"""


@dataclass(frozen=True)
class WriteLog:
    """Every value written to a registered encrypted column, in order, with its key id."""

    def mark(self) -> int:
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(id), 0) FROM rotation_test_writes")
            return int(cursor.fetchone()[0])

    def kids_since(self, mark: int) -> Counter[tuple[str, str]]:
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT tbl, kid FROM rotation_test_writes WHERE id > %s", [mark])
            return Counter((table, kid) for table, kid in cursor.fetchall())


@pytest.fixture
def write_log(transactional_db: None) -> Iterator[WriteLog]:
    columns: dict[str, list[str]] = {}
    for entry in encrypted_fields():
        model = entry.model
        columns.setdefault(model._meta.db_table, []).append(model._meta.get_field(entry.field).column)
    with db_connection.cursor() as cursor:
        cursor.execute("CREATE TABLE rotation_test_writes (id bigserial PRIMARY KEY, tbl text, col text, kid text)")
        cursor.execute(_LOG_FUNCTION)
        for table, names in columns.items():
            arguments = ", ".join(f"'{name}'" for name in names)
            cursor.execute(
                f"CREATE TRIGGER rotation_test_log AFTER INSERT OR UPDATE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION rotation_test_log({arguments})"
            )
    try:
        yield WriteLog()
    finally:
        with db_connection.cursor() as cursor:
            for table in columns:
                cursor.execute(f"DROP TRIGGER IF EXISTS rotation_test_log ON {table}")
            cursor.execute("DROP FUNCTION IF EXISTS rotation_test_log()")
            cursor.execute("DROP TABLE IF EXISTS rotation_test_writes")


# --- The load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients of two web servers, and the beat that keeps the worker refreshing."""

    servers: list[WebServer]
    tokens: list[str]
    saver_tokens: list[str]
    connection_ids: list[int]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    phase: str = "start"
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, outcome)
    failures: list[str] = field(default_factory=list)
    refresh_task_ids: list[str] = field(default_factory=list)
    stopping: list[WebServer] = field(default_factory=list)  # told to stop, not yet exited
    threads: list[threading.Thread] = field(default_factory=list)

    def _post(self, turn: int, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        """One request on a fresh connection, to the other server each time a connection is
        refused (the request never reached a server: safe to send elsewhere, as Fly's proxy
        does); any other transport error is raised, and counts as a failure."""
        for attempt in range(200):  # a hang bound: both servers refusing for long is a failure
            server = self.servers[(turn + attempt) % len(self.servers)]
            try:
                return httpx2.request(method, server.url + path, timeout=30, **kwargs)
            except httpx2.ConnectError as exc:
                if not refused_connection(exc):
                    raise
                time.sleep(0.05 * (attempt % 2))  # both refusing: the next one is restarting
            except httpx2.RemoteProtocolError as exc:
                # uvicorn's shutdown closes a connection it accepted but had not read yet: the
                # request never reached the app. That race belongs to the graceful-deploy tests
                # (test_deploys_web.py); here it is counted and sent on, only while that very
                # server is stopping.
                if str(exc) != "Server disconnected without sending a response." or server not in self.stopping:
                    raise
                self._record("unread_at_stop")
        raise AssertionError("every server refused the connection for 10 s")

    def _record(self, outcome: str, problem: str | None = None) -> None:
        with self.lock:
            self.answers[(self.phase, outcome)] += 1
            if problem is not None:
                self.failures.append(f"[{self.phase}] {problem}")

    def _caller(self, offset: int) -> None:
        for turn in itertools.count(offset):
            if self.stop.is_set():
                return
            token = self.tokens[turn % len(self.tokens)]
            anthropic = turn % 2 == 0
            try:
                if anthropic:
                    response = self._post(
                        turn,
                        "POST",
                        "/anthropic/v1/messages",
                        headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
                        json={
                            "model": "claude-haiku-4-5",
                            "max_tokens": 32,
                            "messages": [{"role": "user", "content": PROMPT}],
                        },
                    )
                else:
                    response = self._post(
                        turn,
                        "POST",
                        "/openai/v1/chat/completions",
                        headers={"Authorization": f"Bearer {token}"},
                        json={"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": PROMPT}]},
                    )
            except httpx2.HTTPError as exc:
                self._record("call_error", f"call: {type(exc).__name__}: {exc}")
                continue
            source = response.headers.get("x-niyra-key-source")
            if response.status_code == 200 and source == "byok":
                self._record("call_ok")
            else:
                self._record("call_error", f"call: {response.status_code} {source} {response.text[:300]}")

    def _saver(self) -> None:
        for turn in range(len(self.saver_tokens) * SAVES_PER_USER):
            if self.stop.wait(SAVE_EVERY_SECONDS):
                return
            token = self.saver_tokens[turn % len(self.saver_tokens)]
            try:
                response = self._post(
                    turn,
                    "PUT",
                    "/api/keys/anthropic",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"key": f"sk-ant-api03-try-rotation-{turn:04d}"},
                )
            except httpx2.HTTPError as exc:
                self._record("save_error", f"save: {type(exc).__name__}: {exc}")
                continue
            if response.status_code == 200 and response.json()["status"] == KeyStatus.VALID:
                self._record("save_ok")
            else:
                self._record("save_error", f"save: {response.status_code} {response.text[:300]}")

    def _beat(self) -> None:
        while not self.stop.wait(REFRESH_EVERY_SECONDS):
            for connection_id in self.connection_ids:
                result = oauth_connection_refresh.apply_async(kwargs={"connection_id": connection_id, "force": True})
                with self.lock:
                    self.refresh_task_ids.append(result.id)

    def start(self) -> Load:
        targets: list[Callable[[], None]] = [lambda n=n: self._caller(n) for n in range(CALLERS)]
        targets += [self._saver, self._beat]
        self.threads = [threading.Thread(target=target, daemon=True) for target in targets]
        for thread in self.threads:
            thread.start()
        return self

    def enter(self, phase: str) -> None:
        with self.lock:
            self.phase = phase

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self.threads), "a client never returned"


def succeeded_refreshes(workers: list[Worker]) -> dict[str, str]:
    """task id -> outcome, of every refresh task the workers finished."""
    done: dict[str, str] = {}
    pattern = re.compile(r"oauth_connection_refresh\[([0-9a-f-]+)\] succeeded in [0-9.]+s: '(\w+)'")
    for worker in workers:
        done.update(pattern.findall(worker.log()))
    return done


@contextlib.contextmanager
def web_servers(env: dict[str, str], logdir: Path, *names: str) -> Iterator[list[WebServer]]:
    """Production web servers started side by side (start-up is the slow part), stopped after."""
    servers = [WebServer(name, env, logdir) for name in names]
    try:
        for server in servers:
            server.start()
        yield [server.wait_ready() for server in servers]
    finally:
        for server in servers:
            server.stop()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_master_key_rotates_under_load_as_the_doc_says(
    private_redis: RedisServer,  # noqa: F811
    sandbox: SandboxServer,
    settings: Any,
    tmp_path: Path,
    make_account: Callable[..., Any],
    store_key: Callable[..., ProviderKey],
    write_log: WriteLog,
) -> None:
    old, new = generate_key_spec("k1"), generate_key_spec("k2")
    keyrings = {"start": old, "add": f"{old},{new}", "promote": f"{new},{old}", "drop": new}
    settings.NIYRA_ENCRYPTION_KEYS = keyrings["start"]
    settings.OAUTH_INTEGRATIONS = {"gmail": sandbox_integration(sandbox, name="gmail")}

    # Given BYOK users with both keys, OAuth connections and a connect flow in progress, all
    # sealed with k1
    users = [make_account(plan="pro") for _ in range(USERS)]
    for user in users:
        store_key(user, "anthropic", f"sk-ant-api03-try-{user.pk:04d}")
        store_key(user, "openai", f"sk-proj-try-{user.pk:04d}-0000-0000")
    tokens = [api_token_create(user=user, name="rotation").plaintext for user in users]
    saver_tokens = [api_token_create(user=user, name="saver").plaintext for user in users]
    connections = [connect(user, "gmail") for user in users[:CONNECTIONS]]
    connection_connect_start(user=users[-1], integration="gmail", redirect_uri=REDIRECT_BASE + "gmail")
    assert OAuthAuthorizationRequest.objects.exists()
    # and two web servers and a worker, on k1
    env = {
        step: deployment_env(redis_url=private_redis.url(), sandbox=sandbox, NIYRA_ENCRYPTION_KEYS=spec)
        for step, spec in keyrings.items()
    }
    workers: list[Worker] = []

    def worker_start(step: str) -> Worker:
        worker = Worker(f"{step}-{len(workers)}", env[step], tmp_path, TRANSPORT_OPTIONS)
        workers.append(worker)
        return worker

    try:
        first_worker = worker_start("start")
        with web_servers(env["start"], tmp_path, "a", "b") as servers, in_process_broker(private_redis.url()):
            first_worker.wait_ready()
            load = Load(servers, tokens, saver_tokens, [c.pk for c in connections]).start()
            time.sleep(LOAD_SECONDS_PER_PHASE)

            def rolling_restart(step: str) -> None:
                """One `fly secrets set`: every machine in turn gets the step's keyring."""
                load.enter(step)
                settings.NIYRA_ENCRYPTION_KEYS = keyrings[step]  # this process (reencrypt, checks)
                a, b = servers
                # web a and the worker are stopped together (warm shutdowns: what they have in
                # hand finishes first), and started again with the step's keyring
                load.stopping.append(a)
                a.signal(signal.SIGTERM)
                os.killpg(workers[-1].process.pid, signal.SIGTERM)
                a.wait_exit(timeout=60)
                load.stopping.remove(a)
                workers[-1].process.wait(timeout=60)
                a.env = env[step]
                a.start()
                worker = worker_start(step)
                a.wait_ready()
                worker.wait_ready()
                load.stopping.append(b)
                b.stop()
                load.stopping.remove(b)
                b.env = env[step]
                b.start().wait_ready()
                time.sleep(LOAD_SECONDS_PER_PHASE)

            # When each step of the doc runs as a rolling restart under load
            rolling_restart("add")
            rolling_restart("promote")
            promoted = write_log.mark()  # every process now seals with k2
            load.enter("reencrypt")
            out = StringIO()
            call_command("reencrypt_secrets", stdout=out, stderr=out)
            time.sleep(LOAD_SECONDS_PER_PHASE)
            rolling_restart("drop")
            load.enter("after")
            time.sleep(LOAD_SECONDS_PER_PHASE)
            load.finish()
            expected = set(load.refresh_task_ids)
            wait_for(
                lambda: expected <= succeeded_refreshes(workers).keys(),
                timeout=START_TIMEOUT_SECONDS,
                what="every queued refresh to be run",
                interval=0.2,
            )
    finally:
        for worker in workers:
            worker.stop()

    # Then no call, key save or refresh failed, in any phase
    assert load.failures == [], "\n".join(load.failures[:20])
    for phase in ("start", "add", "promote", "reencrypt", "drop", "after"):
        assert load.answers[(phase, "call_ok")] > 0, f"no call ran during {phase}: {load.answers}"
    assert sum(n for (_, outcome), n in load.answers.items() if outcome == "save_ok") > 0
    outcomes = Counter(succeeded_refreshes(workers)[task_id] for task_id in expected)
    # ("locked": reencrypt_secrets held that row at that moment; the next tick refreshes it)
    assert set(outcomes) <= {"refreshed", "locked"} and outcomes["refreshed"] > 0, outcomes
    refreshes = [r for r in sandbox.log.records() if r["grant_type"] == "refresh_token"]
    assert refreshes and {r["status"] for r in refreshes} == {200}
    # and reencrypt_secrets moved what was left under k1 and found nothing unreadable
    report = out.getvalue()
    moved = {label: int(n) for label, n in re.findall(r"^(\S+): re-encrypted (\d+) row", report, re.MULTILINE)}
    assert moved["byok.ProviderKey"] > 0 and moved["connections.OAuthAuthorizationRequest"] > 0, report
    assert "unreadable" not in report.replace("; 0 unreadable", ""), report

    # Then every value of every registered encrypted column opens with the final keyring alone,
    # sealed with k2
    final = Keyring.parse(keyrings["drop"])
    for entry in encrypted_fields():
        values = 0
        for row in entry.model._default_manager.all():
            value = getattr(row, entry.field)
            if value is None or len(value) == 0:
                continue
            values += 1
            assert Keyring.key_id_of(value) == "k2", f"{entry.label} #{row.pk} is under {Keyring.key_id_of(value)}"
            final.decrypt(value, purpose=entry.purpose(row))
        assert values > 0, f"no value of {entry.label} was checked"
        if entry.key_id_field:  # the column that says which key a row is under agrees
            kids = set(entry.model._default_manager.values_list(entry.key_id_field, flat=True))
            assert kids == {"k2"}, f"{entry.label}: {entry.key_id_field} {kids}"
    # and nothing was sealed with k1 once every process had k2 first
    written = write_log.kids_since(promoted)
    assert {kid for _, kid in written} == {"k2"}, written
    # and no key or connection was given up on as unreadable
    assert set(ProviderKey.objects.values_list("status", flat=True)) == {KeyStatus.VALID}
    assert set(OAuthConnection.objects.values_list("status", flat=True)) == {ConnectionStatus.ACTIVE}
    assert not AuditEvent.objects.filter(
        event__in=["provider_key.needs_reentry", "oauth_connection.needs_reauth", "oauth_connection.error"]
    ).exists()
    # and the refresh token each connection holds is the live one: the provider takes it
    for connection in connections:
        _, refresh = tokens_of(connection)
        assert refresh is not None
        assert oauth.refresh_grant(oauth.get_integration("gmail"), refresh_token=refresh).access_token


@pytest.fixture
def gateway(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayLoop]:
    yield from counted_gateway(monkeypatch)


@pytest.mark.django_db(transaction=True)
def test_reencryption_evicts_the_gateways_cached_ciphertext(
    gateway: GatewayLoop, settings: Any, make_account: Callable[..., Any], store_key: Callable[..., ProviderKey]
) -> None:
    """The caller cache keeps each user's ProviderKey rows, ciphertext included (the key is only
    decrypted inside a call). A row `reencrypt_secrets` rewrites notifies like any key change, so
    the cache never holds a k1 ciphertext once the row is under k2: the entry is dropped at once,
    even in a process whose keyring then loses k1 without the restart `fly secrets set` does."""
    old, new = generate_key_spec("k1"), generate_key_spec("k2")
    settings.NIYRA_ENCRYPTION_KEYS = old
    # Given a caller whose key, sealed with k1, sits in the gateway's cache
    user = make_account(plan="pro")
    store_key(user, "anthropic", "sk-ant-api03-try-cached-0000")
    token = api_token_create(user=user, name="cache").plaintext
    gateway.listening()
    cached = gateway.call(caller_authenticate, token)
    assert Keyring.key_id_of(cached.snapshot.keys["anthropic"].ciphertext) == "k1"
    assert gateway.call(caller_authenticate, token) is cached  # served from the cache

    # When the key is re-encrypted under k2, and this process's keyring then drops k1
    settings.NIYRA_ENCRYPTION_KEYS = f"{new},{old}"
    call_command("reencrypt_secrets", stdout=StringIO())
    gateway.evicted(token)
    settings.NIYRA_ENCRYPTION_KEYS = new

    # Then the next call reads the row again and its key opens
    caller = gateway.call(caller_authenticate, token)
    assert caller is not cached
    assert provider_key_plaintext(caller.snapshot.keys["anthropic"]) == "sk-ant-api03-try-cached-0000"
