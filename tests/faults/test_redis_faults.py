"""Redis (cache and Celery broker) shut down while the API serves, then started again.

Given the web process's cache and broker on a private Redis, when that Redis is really shut down
(the port closes: SHUTDOWN NOSAVE, not SIGSTOP), then routed calls on credits and BYOK and key
management keep working and answer within the client's timeout; /readyz says the broker is down
while /healthz stays up; an enqueue that fails does not fail the request; and once Redis is back
on the same port, /readyz is ready again and the OAuth refresh daemon's next tick catches up
every connection that came due meanwhile, before its token lapses, exactly once each.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from django.test import Client
from django.utils import timezone

from connections.models import ConnectionStatus, OAuthConnection
from connections.services import connection_connect_start
from connections.tasks import oauth_refresh_tick
from sandbox import SandboxServer, anthropic_key, key_id, openai_key
from tests.connections.test_oauth_helpers import REDIRECT_BASE, authorize, connect, sandbox_integration, tokens_of
from tests.faults.conftest import PROMPT, Headers
from tests.faults.services import (
    RedisServer,
    Worker,
    deployment_env,
    in_process_broker,
    private_redis,  # noqa: F401 - fixture
    redis_cache_settings,
    start_workers,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

# The client gives up after this long: a request stuck on the dead Redis fails the test instead
# of hanging it (the stacks' own timeouts are far shorter; this is a bound, not a speed check).
CLIENT_TIMEOUT_SECONDS = 15.0


@pytest.fixture
def app_on(settings: Any) -> Callable[[RedisServer], None]:
    """Point this process's cache, broker URL (what /readyz checks) and Celery app at a Redis."""
    entered: list[Any] = []

    def point(redis: RedisServer) -> None:
        # The Celery app reads its configuration from the settings lazily, on first use: enter
        # (and so capture the broker to restore) before the settings name the private Redis.
        manager = in_process_broker(redis.url())
        manager.__enter__()
        entered.append(manager)
        settings.CACHES = redis_cache_settings(redis.url())
        settings.CELERY_BROKER_URL = redis.url()

    yield point
    for manager in reversed(entered):
        manager.__exit__(None, None, None)


def message(model: str = "claude-haiku-4-5") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 50}


def test_routing_and_key_management_keep_working_while_redis_is_down(
    private_redis: RedisServer,  # noqa: F811
    app_on: Callable[[RedisServer], None],
    live_asgi: str,
    providers: SandboxServer,
    make_account: Callable[..., Any],
    store_key: Callable[..., Any],
    bearer: Headers,
) -> None:
    # Given a server whose cache and broker are the private Redis, and users on both paths
    app_on(private_redis)
    on_credits = make_account(plan="free")
    on_byok = make_account(plan="pro")
    byok_key = anthropic_key()
    store_key(on_byok, "anthropic", byok_key)
    managing = make_account(plan="pro")
    with httpx2.Client(base_url=live_asgi, timeout=CLIENT_TIMEOUT_SECONDS) as http:
        assert http.get("/readyz").status_code == 200

        # When Redis is shut down
        private_redis.stop()

        # Then liveness stays up and readiness names the broker, and only the broker
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["down"] == ["broker"]
        assert ready.json()["checks"] == {"database": "ok", "broker": "down", "keyring": "ok"}

        # and routed calls are served on credits and on the user's own key
        platform = http.post("/api/llm/messages", json=message(), headers=bearer(on_credits))
        assert platform.status_code == 200, platform.text
        assert platform.json()["routing"]["key_source"] == "platform"
        own_key = http.post("/api/llm/messages", json=message(), headers=bearer(on_byok))
        assert own_key.status_code == 200, own_key.text
        assert own_key.json()["routing"]["key_source"] == "byok"
        assert providers.log.count(key=byok_key) == 1

        # and keys are saved (validated at the sandbox), tested, rotated and disconnected
        auth = bearer(managing)
        first, second = openai_key(), openai_key()
        saved = http.put("/api/keys/openai", json={"key": first}, headers=auth)
        assert saved.status_code == 200, saved.text
        assert saved.json()["status"] == "valid"
        tested = http.post("/api/keys/openai/test", headers=auth)
        assert tested.status_code == 200, tested.text
        rotated = http.put("/api/keys/openai", json={"key": second}, headers=auth)
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["fingerprint"] != saved.json()["fingerprint"]
        assert providers.log.count(key=first) == 2  # the save's probe and the test's
        assert providers.log.count(key=second) == 1  # the rotation's probe
        assert http.delete("/api/keys/openai", headers=auth).status_code == 204
        assert http.get("/api/keys", headers=auth).json() == []

        # When Redis comes back on the same port, the server is ready again
        private_redis.start()
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["down"] == []


def refreshes_presenting(sandbox: SandboxServer, refresh_token: str) -> list[int | None]:
    """The statuses of the sandbox's answers to refresh requests that presented `refresh_token`."""
    rid = key_id(refresh_token)
    return [r["status"] for r in sandbox.log.records() if r["refresh_token_id"] == rid]


def access_token_works(sandbox: SandboxServer, access_token: str) -> bool:
    response = httpx2.get(f"{sandbox.oauth_base_url}/userinfo", headers={"Authorization": f"Bearer {access_token}"})
    return response.status_code == 200


def test_refreshes_lost_while_redis_was_down_are_caught_up_by_the_next_tick(
    private_redis: RedisServer,  # noqa: F811
    app_on: Callable[[RedisServer], None],
    start_workers: Callable[..., list[Worker]],  # noqa: F811
    sandbox: SandboxServer,
    settings: Any,
    make_account: Callable[..., Any],
) -> None:
    # Given two real workers on the private Redis; "gmail" access tokens live 16 s (each refresh
    # queues its own follow-up at half-life), "drive" tokens an hour (only the tick renews them)
    settings.OAUTH_INTEGRATIONS = {
        "gmail": sandbox_integration(sandbox, "ttl16", name="gmail"),
        "drive": sandbox_integration(sandbox, name="drive"),
    }
    app_on(private_redis)
    workers = start_workers(deployment_env(redis_url=private_redis.url(), sandbox=sandbox), "one", "two")
    # A connected while Redis is up: its follow-up refresh is queued on Redis, which loses it
    alice, bob, carol = (make_account(plan="pro", credits_mc=0) for _ in range(3))
    a = connect(alice, "gmail")
    # C's token is about to expire: due at the very next tick
    c = connect(carol, "drive")
    expires_at = timezone.now() + timedelta(seconds=200)
    OAuthConnection.objects.filter(pk=c.pk).update(
        expires_at=expires_at, token_issued_at=expires_at - timedelta(seconds=3600)
    )

    # When Redis is shut down
    private_redis.stop()

    # Then B still connects through the browser callback, whose follow-up enqueue fails unseen
    start = connection_connect_start(user=bob, integration="gmail", redirect_uri=REDIRECT_BASE + "gmail")
    browser = Client()
    browser.force_login(bob)
    callback = browser.get("/oauth/callback/gmail", authorize(start))
    assert callback.status_code == 302
    assert callback["Location"] == "/settings/connections/"
    b = OAuthConnection.objects.get(user=bob, integration="gmail")
    assert b.status == ConnectionStatus.ACTIVE
    # and the tick selects all three (the tasks leave young short-lived tokens alone) but cannot
    # queue them: it says so and returns, it neither fails nor hangs
    assert oauth_refresh_tick() == 3
    assert [r for r in sandbox.log.records() if r["grant_type"] == "refresh_token"] == []

    before = {conn.pk: (tokens_of(conn), conn.expires_at) for conn in (a, b, c)}

    # When Redis is back on the same port (empty: whatever was queued is gone) and beat ticks
    private_redis.start()
    for worker in workers:
        if "Unrecoverable error" in worker.log():
            # Known, not ours: the worker holding a reserved message (A's follow-up, an ETA task)
            # when the broker connection dropped failed to restore it (kombu 5.7.0: "'NoneType'
            # object has no attribute 'hostname'") and ends: `celery worker` exits 1 and its
            # machine is restarted (this harness's `app.worker_main` loses the status). Were it
            # left up consuming nothing, its liveness watchdog would end it (core.liveness,
            # tests/faults/test_worker_liveness.py). The other worker carries on; kill() only
            # makes sure this one is gone.
            worker.kill()

    def caught_up() -> bool:
        oauth_refresh_tick()
        return not OAuthConnection.objects.filter(pk__in=before, last_refreshed_at__isnull=True).exists()

    wait_for(caught_up, timeout=30, what="the ticks to refresh every due connection", interval=1.0)

    # Then every connection was refreshed exactly once from the token it had, before that lapsed
    for pk, ((access, refresh), expired_at) in before.items():
        connection = OAuthConnection.objects.get(pk=pk)
        assert connection.status == ConnectionStatus.ACTIVE
        assert connection.last_refreshed_at < expired_at, connection.integration
        assert refreshes_presenting(sandbox, refresh) == [200]
        new_access, new_refresh = tokens_of(connection)
        assert (new_access, new_refresh) != (access, refresh)
        assert access_token_works(sandbox, new_access)


def test_a_frozen_redis_fails_fast_instead_of_hanging_requests(
    private_redis: RedisServer,  # noqa: F811
    app_on: Callable[[RedisServer], None],
    live_asgi: str,
    providers: SandboxServer,
    make_account: Callable[..., Any],
    bearer: Headers,
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP: frozen, or cut off by a
    partition) is worse than a stopped one: without socket timeouts every cache read, publish
    and readiness check would wait forever. With them, each gives up within seconds."""
    import os
    import signal

    from django.core.cache import cache

    from connections.tasks import oauth_connection_refresh

    app_on(private_redis)
    user = make_account(plan="free")
    assert private_redis.process is not None
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    try:
        with httpx2.Client(base_url=live_asgi, timeout=CLIENT_TIMEOUT_SECONDS) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["down"] == ["broker"]
            # Routing reads no cache and enqueues nothing: it serves as usual.
            routed = http.post("/api/llm/messages", json=message(), headers=bearer(user))
            assert routed.status_code == 200, routed.text
        # A cache read and a task publish fail with an error instead of hanging the caller.
        assert isinstance(gives_up(lambda: cache.get("anything")), Exception)
        assert isinstance(gives_up(lambda: oauth_connection_refresh.apply_async(args=[0], retry=False)), Exception)
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)


def gives_up(call: Callable[[], Any]) -> object:
    """What `call` returned or raised, run in a thread: one still blocked after the client's
    timeout fails the test rather than hanging it."""
    import threading

    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(CLIENT_TIMEOUT_SECONDS)
    assert outcome, f"still blocked after {CLIENT_TIMEOUT_SECONDS:.0f} s on a frozen Redis"
    return outcome[0]
