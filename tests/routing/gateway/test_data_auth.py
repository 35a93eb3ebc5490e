"""The gateway's data path, caller side: its async pool, token -> caller -> snapshot in one read,
the in-process cache, and its invalidation by PostgreSQL notifications — in this process and
in another one — and what happens while the listener is away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import LAST_USED_RESOLUTION, api_token_create, api_token_revoke, hash_token
from byok.models import ProviderKey
from byok.selectors import provider_key_plaintext
from byok.services import provider_key_disconnect
from core.errors import NiyraError
from credits import ledger_sql
from credits.models import BillingAccount, KeySource
from credits.services.accounts import billing_plan_set
from credits.services.ledger import credit_grant
from routing.catalog import resolve
from routing.credentials import credential_decide
from routing.gateway import db
from routing.gateway.auth import Caller, caller_authenticate, caller_for_user
from routing.gateway.cache import routing_cache
from routing.services import routing_preference_set

T = TypeVar("T")

ANTHROPIC_KEY = "sk-ant-api03-data-path-test-key-AbCd"
LISTEN_TIMEOUT = 10.0


class GatewayLoop:
    """An event loop on a thread of its own, as a gateway worker has: the cache and pool live
    on it across calls, while the test's thread writes through Django's services."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.checkouts = 0

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def call() -> T:
            return await func(*args, **kwargs)

        return self.run(call())

    def listening(self) -> None:
        """Wait until this loop's cache listener is connected (it starts on first use)."""

        async def wait() -> None:
            deadline = time.monotonic() + LISTEN_TIMEOUT
            while not routing_cache().usable():
                if time.monotonic() > deadline:
                    raise AssertionError("the routing cache's listener never connected")
                await asyncio.sleep(0.01)

        self.run(wait())

    def evicted(self, token: str | None = None, *, user_id: int | None = None) -> None:
        """Wait until this process has received the notification of a change (the drain before
        each lookup applies it; nothing here authenticates). PostgreSQL delivers it as the
        change commits — here, usually before the writer's commit returns; within milliseconds
        on a loaded machine — and the very next call after that sees the change."""

        async def wait() -> None:
            deadline = time.monotonic() + LISTEN_TIMEOUT
            cache = routing_cache()
            while True:
                cache.usable()
                if token is not None and cache.token(hash_token(token)) is None:
                    return
                if user_id is not None and cache.user(user_id) is None:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError("no notification arrived")
                await asyncio.sleep(0.001)

        self.run(wait())

    def close(self) -> None:
        self.run(db.pool_close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayLoop]:
    yield from counted_gateway(monkeypatch)


def counted_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayLoop]:
    """The loop, counting the pool's checkouts (every statement the gateway runs takes one)."""
    gateway = GatewayLoop()
    checkout = db.gateway_connection

    @contextlib.asynccontextmanager
    async def counted() -> AsyncIterator[Any]:
        gateway.checkouts += 1
        async with checkout() as conn:
            yield conn

    monkeypatch.setattr(db, "gateway_connection", counted)
    yield gateway
    gateway.close()


def _queries(gateway: GatewayLoop, func: Callable[[], T]) -> tuple[T, int]:
    before = gateway.checkouts
    result = func()
    return result, gateway.checkouts - before


# --- The pool ------------------------------------------------------------------------------------


def test_the_pool_reads_what_django_committed(gateway: GatewayLoop, make_account: Callable[..., Any]) -> None:
    user = make_account(plan="pro", credits_mc=5_000)
    row = gateway.call(db.fetch_one, ledger_sql.account_get(user_id=user.pk))
    account = ledger_sql.account_from_row(row)
    assert account is not None
    assert (account.user_id, account.plan, account.balance) == (user.pk, "pro", 5_000)
    assert gateway.call(db.fetch_one, ledger_sql.account_get(user_id=user.pk + 1_000)) is None


def test_the_pool_is_one_per_loop_and_closes(gateway: GatewayLoop) -> None:
    async def pools() -> tuple[bool, bool, bool]:
        first, again = await db.gateway_pool(), await db.gateway_pool()
        opened = db.pool_open()
        await db.pool_close()
        return first is again, opened, db.pool_open()

    assert gateway.run(pools()) == (True, True, False)


def test_a_pool_that_cannot_hand_out_a_connection_fails_the_call(
    gateway: GatewayLoop, settings: Any, make_account: Callable[..., Any]
) -> None:
    """Every connection busy past the checkout timeout: the call fails with the catalogue's
    error instead of hanging."""
    settings.GATEWAY_DB_POOL_MIN, settings.GATEWAY_DB_POOL_MAX = 1, 1
    settings.GATEWAY_DB_POOL_TIMEOUT_SECONDS = 0.2
    user = make_account(credits_mc=0)

    async def starved() -> str:
        await db.pool_close()
        pool = await db.gateway_pool()
        async with pool.connection():
            try:
                await db.fetch_one(ledger_sql.account_get(user_id=user.pk))
            except NiyraError as exc:
                return exc.code
        return "served"

    assert gateway.run(starved()) == db.UNAVAILABLE.code


def test_a_connection_the_server_dropped_fails_one_call_and_the_next_is_served(
    gateway: GatewayLoop, make_account: Callable[..., Any]
) -> None:
    user = make_account(credits_mc=0)
    statement = ledger_sql.account_get(user_id=user.pk)

    async def pids() -> list[int]:
        pool = await db.gateway_pool()
        await pool.wait()
        found = []
        for _ in range(pool.get_stats()["pool_size"]):
            async with pool.connection() as conn:
                found.append(conn.info.backend_pid)
        return found

    for pid in set(gateway.run(pids())):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    outcomes: list[bool | str] = []
    for _ in range(3):
        try:
            outcomes.append(gateway.call(db.fetch_one, statement) is not None)
        except NiyraError as exc:
            outcomes.append(exc.code)
    assert outcomes[-1] is True
    assert outcomes.count(db.UNAVAILABLE.code) <= 1


# --- Token -> caller -----------------------------------------------------------------------------


def test_a_good_token_is_its_caller_with_a_snapshot_of_real_instances(
    gateway: GatewayLoop, make_account: Callable[..., Any], store_key: Callable[..., ProviderKey]
) -> None:
    user = make_account(plan="pro", credits_mc=7_000)
    store_key(user, "anthropic", ANTHROPIC_KEY)
    routing_preference_set(user=user, fallback_to_credits=True)
    issued = api_token_create(user=user, name="gateway")

    caller = gateway.call(caller_authenticate, issued.plaintext)

    assert isinstance(caller, Caller)
    assert (caller.user_id, caller.token_id) == (user.pk, issued.token.pk)
    snapshot = caller.snapshot
    assert isinstance(snapshot.account, BillingAccount)
    assert (snapshot.account.plan, snapshot.account.balance, snapshot.fallback_to_credits) == ("pro", 7_000, True)
    key = snapshot.keys["anthropic"]
    assert isinstance(key, ProviderKey) and key.pk is not None and key.user_id == user.pk
    assert provider_key_plaintext(key) == ANTHROPIC_KEY  # the ciphertext came back as the keyring needs it
    credential = credential_decide(model=resolve("claude-sonnet-4-6"), snapshot=snapshot)
    assert credential.key_source == KeySource.BYOK and credential.provider_key is not None


def test_a_user_without_account_keys_or_preference(gateway: GatewayLoop, make_user: Callable[..., Any]) -> None:
    user = make_user()
    caller = gateway.call(caller_authenticate, api_token_create(user=user, name="t").plaintext)
    assert caller is not None
    assert (caller.snapshot.account, caller.snapshot.keys, caller.snapshot.fallback_to_credits) == (None, {}, False)


@pytest.mark.parametrize(
    "presented",
    ["", "niy", "niy__secret", "sk-ant-something", "niy_deadbeef_wrong-secret", "Bearer niy_x_y"],
)
def test_a_malformed_or_unknown_token_is_nobody(gateway: GatewayLoop, presented: str) -> None:
    assert gateway.call(caller_authenticate, presented) is None


def test_the_right_prefix_with_a_wrong_secret_is_nobody(gateway: GatewayLoop, make_user: Callable[..., Any]) -> None:
    issued = api_token_create(user=make_user(), name="t")
    assert gateway.call(caller_authenticate, issued.plaintext + "x") is None
    assert gateway.call(caller_authenticate, issued.plaintext) is not None


def test_revoked_tokens_and_inactive_users_are_nobody(gateway: GatewayLoop, make_user: Callable[..., Any]) -> None:
    user, other = make_user(), make_user()
    revoked = api_token_create(user=user, name="old")
    api_token_revoke(user=user, token_id=revoked.token.pk)
    inactive = api_token_create(user=other, name="t")
    other.is_active = False
    other.save()
    assert gateway.call(caller_authenticate, revoked.plaintext) is None
    assert gateway.call(caller_authenticate, inactive.plaintext) is None
    assert gateway.call(caller_for_user, other.pk) is None
    assert gateway.call(caller_for_user, other.pk + 1_000) is None


def test_last_used_is_stamped_at_most_once_per_resolution(gateway: GatewayLoop, make_user: Callable[..., Any]) -> None:
    issued = api_token_create(user=make_user(), name="t")
    gateway.listening()
    gateway.call(caller_authenticate, issued.plaintext)
    first = ApiToken.objects.get(pk=issued.token.pk).last_used_at
    assert first is not None and timezone.now() - first < LAST_USED_RESOLUTION

    gateway.call(caller_authenticate, issued.plaintext)  # a hit, inside the resolution: no write
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == first

    long_ago = timezone.now() - 2 * LAST_USED_RESOLUTION
    ApiToken.objects.filter(pk=issued.token.pk).update(last_used_at=long_ago)

    async def age_the_entry() -> None:
        entry = routing_cache().token(hash_token(issued.plaintext))
        assert entry is not None, "the stamp changed no routing fact: the entry is still cached"
        entry.stamped_at = long_ago

    gateway.run(age_the_entry())
    _, queries = _queries(gateway, lambda: gateway.call(caller_authenticate, issued.plaintext))
    assert queries == 1  # the guarded stamp, nothing else
    stamped = ApiToken.objects.get(pk=issued.token.pk).last_used_at
    assert stamped is not None and stamped > long_ago


# --- The cache -----------------------------------------------------------------------------------


def test_a_cached_caller_is_served_without_a_query(gateway: GatewayLoop, make_account: Callable[..., Any]) -> None:
    user = make_account()
    token = api_token_create(user=user, name="t").plaintext
    gateway.listening()
    first, read = _queries(gateway, lambda: gateway.call(caller_authenticate, token))
    again, cached = _queries(gateway, lambda: gateway.call(caller_authenticate, token))
    session, session_read = _queries(gateway, lambda: gateway.call(caller_for_user, user.pk))
    session_again, session_cached = _queries(gateway, lambda: gateway.call(caller_for_user, user.pk))
    assert (read, cached, session_read, session_cached) == (1, 0, 1, 0)
    assert again is first and session_again is session
    assert session is not None and session.token_id is None and session.snapshot.account is not None


def test_balance_moves_and_key_stamps_keep_the_entry(
    gateway: GatewayLoop, make_account: Callable[..., Any], store_key: Callable[..., ProviderKey]
) -> None:
    """Every call moves the balance and the reservation: they must not empty the cache."""
    user = make_account()
    key = store_key(user, "anthropic", ANTHROPIC_KEY)
    token = api_token_create(user=user, name="t").plaintext
    gateway.listening()
    gateway.call(caller_authenticate, token)
    credit_grant(user=user, amount=1_000, reason="top-up", idempotency_key="top-up-1")
    ProviderKey.objects.filter(pk=key.pk).update(last_tested_at=timezone.now(), updated_at=timezone.now())
    # Key health's stamps: a routed call's last use, the scheduled check's last and next run.
    ProviderKey.objects.filter(pk=key.pk).update(
        last_used_at=timezone.now(), last_checked_at=timezone.now(), next_check_at=timezone.now()
    )
    ApiToken.objects.filter(user=user).update(last_used_at=timezone.now())
    time.sleep(0.05)  # a notification, had one been sent, would have arrived
    _, queries = _queries(gateway, lambda: gateway.call(caller_authenticate, token))
    assert queries == 0


def _changes() -> dict[str, Callable[[Any], None]]:
    return {
        "token revoked": lambda user: api_token_revoke(user=user, token_id=ApiToken.objects.get(user=user).pk),
        "key disconnected": lambda user: provider_key_disconnect(user=user, provider="anthropic"),
        "key marked": lambda user: ProviderKey.objects.filter(user=user).update(status="invalid"),
        "plan changed": lambda user: billing_plan_set(user=user, plan="free"),
        "preference changed": lambda user: routing_preference_set(user=user, fallback_to_credits=True),
        "cap changed": lambda user: routing_preference_set(
            user=user, fallback_to_credits=False, fallback_daily_cap_mc=5_000
        ),
        "user deactivated": lambda user: type(user).objects.filter(pk=user.pk).update(is_active=False),
    }


def _plan(caller: Caller | None) -> str | None:
    account = caller.snapshot.account if caller is not None else None
    return account.plan if account is not None else None


def _observed(caller: Caller | None) -> tuple[Any, ...] | None:
    if caller is None:
        return None
    key = caller.snapshot.keys.get("anthropic")
    account = caller.snapshot.account
    snapshot = caller.snapshot
    return (
        account.plan if account else None,
        key.status if key else None,
        snapshot.fallback_to_credits,
        snapshot.fallback_daily_cap_mc,
    )


@pytest.mark.parametrize("change", list(_changes()))
def test_a_change_committed_here_is_seen_by_the_very_next_call(
    gateway: GatewayLoop, make_account: Callable[..., Any], store_key: Callable[..., ProviderKey], change: str
) -> None:
    user = make_account(plan="pro")
    store_key(user, "anthropic", ANTHROPIC_KEY)
    token = api_token_create(user=user, name="t").plaintext
    gateway.listening()
    before = _observed(gateway.call(caller_authenticate, token))
    assert _queries(gateway, lambda: gateway.call(caller_authenticate, token))[1] == 0  # cached

    _changes()[change](user)
    gateway.evicted(token)
    after = _observed(gateway.call(caller_authenticate, token))
    expected = {
        "token revoked": None,
        "key disconnected": ("pro", None, False, None),
        "key marked": ("pro", "invalid", False, None),
        "plan changed": ("free", "valid", False, None),
        "preference changed": ("pro", "valid", True, None),
        "cap changed": ("pro", "valid", False, 5_000),
        "user deactivated": None,
    }[change]
    assert before == ("pro", "valid", False, None)
    assert after == expected


def test_the_session_users_entry_is_dropped_too(gateway: GatewayLoop, make_account: Callable[..., Any]) -> None:
    user = make_account(plan="pro")
    gateway.listening()
    assert _plan(gateway.call(caller_for_user, user.pk)) == "pro"
    billing_plan_set(user=user, plan="alpha")
    gateway.evicted(user_id=user.pk)
    assert _plan(gateway.call(caller_for_user, user.pk)) == "alpha"


def test_a_fill_that_raced_an_eviction_is_not_stored(gateway: GatewayLoop, make_account: Callable[..., Any]) -> None:
    user = make_account(plan="pro")
    gateway.listening()

    async def race() -> int:
        cache = routing_cache()
        epoch = cache.epoch
        cache.evict(user.pk)  # a notification applied while the read was in flight
        cache.put_user(user.pk, "stale", epoch=epoch)
        return len(cache)

    assert gateway.run(race()) == 0


def test_the_cache_is_bounded_and_entries_expire(gateway: GatewayLoop, make_user: Callable[..., Any]) -> None:
    gateway.listening()

    async def bounded() -> tuple[int, bool, bool]:
        cache = routing_cache()
        size, cache.size = cache.size, 3
        try:
            for user_id in range(1, 6):
                cache.put_user(user_id, f"caller {user_id}", epoch=cache.epoch)
            kept = len(cache)
            ttl, cache.ttl = cache.ttl, -1.0
            cache.put_user(99, "expired at once", epoch=cache.epoch)
            cache.ttl = ttl
            return kept, cache.user(99) is None, cache.user(5) == "caller 5"
        finally:
            cache.size = size
            cache.clear()

    assert gateway.run(bounded()) == (3, True, True)


def test_while_the_listener_is_away_every_call_reads_then_the_cache_comes_back(
    gateway: GatewayLoop, make_account: Callable[..., Any]
) -> None:
    user = make_account(plan="pro")
    token = api_token_create(user=user, name="t").plaintext
    gateway.listening()
    gateway.call(caller_authenticate, token)
    assert _queries(gateway, lambda: gateway.call(caller_authenticate, token))[1] == 0

    async def listener_pid() -> int | None:
        return routing_cache().listener.backend_pid

    pid = gateway.run(listener_pid())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    # The listener's socket says so at once; until a new listener is up, nothing is cached.
    time.sleep(0.05)
    assert _queries(gateway, lambda: gateway.call(caller_authenticate, token))[1] == 1
    billing_plan_set(user=user, plan="free")  # a change nobody is listening for
    gateway.listening()
    assert gateway.run(listener_pid()) not in (None, pid)
    caller, queries = _queries(gateway, lambda: gateway.call(caller_authenticate, token))
    assert (_plan(caller), queries) == ("free", 1)  # the cache started empty again
    assert _queries(gateway, lambda: gateway.call(caller_authenticate, token))[1] == 0


# --- Across processes ----------------------------------------------------------------------------

CHILD_READY_TIMEOUT = 60


def _child_environment() -> dict[str, str]:
    config = settings.DATABASES["default"]
    host = config["HOST"] or "127.0.0.1"
    credentials = config["USER"] + (f":{config['PASSWORD']}" if config["PASSWORD"] else "")
    url = f"postgres://{credentials}@{host}:{config['PORT'] or 5432}/{config['NAME']}"
    if host.startswith("/"):  # the embedded server's socket directory
        url = f"postgres://{credentials}@/{config['NAME']}?host={host}"
    return os.environ | {
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "niyra.settings.test",
        "PYTHONPATH": str(Path(settings.BASE_DIR)),
    }


class OtherProcess:
    """Another gateway worker: a process of its own authenticating the tokens it is sent."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_environment(),
            cwd=settings.BASE_DIR,
        )
        assert self.ask("listening") == "listening"

    def ask(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def authenticate(self, token: str) -> str:
        return self.ask(f"auth {token}")

    def evicted(self, token: str) -> bool:
        """Whether the other process received the change's notification (within seconds)."""
        return self.ask(f"evicted {token}") == "evicted"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        self.process.wait(10)


@pytest.fixture
def other_process() -> Iterator[OtherProcess]:
    other = OtherProcess()
    yield other
    other.close()


def test_a_revoked_token_is_refused_by_another_process_on_its_very_next_call(
    other_process: OtherProcess, make_account: Callable[..., Any], store_key: Callable[..., ProviderKey]
) -> None:
    user = make_account(plan="pro")
    store_key(user, "anthropic", ANTHROPIC_KEY)
    issued = api_token_create(user=user, name="t")
    assert other_process.authenticate(issued.plaintext) == f"user {user.pk} keys anthropic read"
    assert other_process.authenticate(issued.plaintext) == f"user {user.pk} keys anthropic cached"

    provider_key_disconnect(user=user, provider="anthropic")
    assert other_process.evicted(issued.plaintext)
    assert other_process.authenticate(issued.plaintext) == f"user {user.pk} keys - read"

    api_token_revoke(user=user, token_id=issued.token.pk)
    assert other_process.evicted(issued.plaintext)
    assert other_process.authenticate(issued.plaintext) == "nobody"


CHILD = "import django; django.setup(); from tests.routing.gateway.test_data_auth import child; child()"


def child() -> None:
    """The other process (Django set up on the test database): a gateway loop authenticating
    the tokens it reads from stdin, saying whether each was read or served from its cache."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        checkouts = 0
        checkout = db.gateway_connection

        @contextlib.asynccontextmanager
        async def counted() -> AsyncIterator[Any]:
            nonlocal checkouts
            checkouts += 1
            async with checkout() as conn:
                yield conn

        db.gateway_connection = counted
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            command, _, argument = line.partition(" ")
            if command == "quit":
                break
            if command == "listening":
                deadline = time.monotonic() + CHILD_READY_TIMEOUT
                while not routing_cache().usable() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                answer = "listening"
            elif command == "evicted":
                deadline = time.monotonic() + CHILD_READY_TIMEOUT
                cache = routing_cache()
                while (not cache.usable() or cache.token(hash_token(argument))) and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
                answer = "evicted" if time.monotonic() < deadline else "still cached"
            else:
                before = checkouts
                caller = await caller_authenticate(argument)
                how = "cached" if checkouts == before else "read"
                if caller is None:
                    answer = "nobody"
                else:
                    keys = ",".join(sorted(caller.snapshot.keys)) or "-"
                    answer = f"user {caller.user_id} keys {keys} {how}"
            sys.stdout.write(answer + "\n")
            sys.stdout.flush()
        await db.pool_close()

    asyncio.run(serve())
