"""A Celery worker killed (kill -9) in the middle of an OAuth refresh.

With `acks_late`, the message of a killed worker stays unacknowledged on Redis and is delivered
again once the broker's visibility timeout has passed (an hour in production; two seconds here).
Whether that redelivery is harmless depends on where the kill landed:

* Realistic case (tested with real workers): the refresh request is in flight at the provider,
  which has not answered yet. The sandbox's `slow<ms>` sleeps *before* it touches the grant, and
  it cancels a handler whose client went away, so the killed worker's request rotates nothing.
  The PostgreSQL row lock dies with the worker's connection, the second worker presents the same
  refresh token, and the token is refreshed exactly once: nothing is lost.
* The other case (documented by the last test): the provider rotated the refresh token and its
  reply died with the worker. The redelivered task presents the old, rotated token; a provider
  with reuse detection (the sandbox, like OAuth 2.1 guidance) answers `invalid_grant` and revokes
  the grant, so the connection goes to `needs_reauth` (audited; the user sees Reconnect). Nothing
  on our side can recover a reply that was never received: the window is the few milliseconds
  between the provider's commit and our own, and the outcome is a clean, visible reconnect, never
  a stale token used silently.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from django.utils import timezone

from accounts.models import AuditEvent
from connections import oauth
from connections.models import ConnectionStatus, OAuthConnection
from connections.tasks import oauth_connection_refresh, oauth_refresh_tick
from core.errors import OAUTH_NEEDS_REAUTH
from sandbox import SandboxServer, key_id
from tests.connections.test_oauth_helpers import connect, sandbox_integration, tokens_of
from tests.faults.services import (
    RedisServer,
    Worker,
    deployment_env,
    in_process_broker,
    private_redis,  # noqa: F401 - fixture
    start_workers,  # noqa: F401 - fixture
    wait_for,
)

# Redelivery in seconds instead of the production hour; the surviving worker sweeps every second.
TRANSPORT_OPTIONS = {"visibility_timeout": 2, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
SLOW_MS = 2000  # the sandbox's token endpoint sleeps this long before it rotates anything


def make_due(connection: OAuthConnection) -> None:
    """The row says the token expires in 200 s (inside the tick's window), issued an hour before;
    the sandbox's token is in fact good for an hour (the row errs early, as the code does)."""
    expires_at = timezone.now() + timedelta(seconds=200)
    OAuthConnection.objects.filter(pk=connection.pk).update(
        expires_at=expires_at, token_issued_at=expires_at - timedelta(seconds=3600)
    )


def refreshes_presenting(sandbox: SandboxServer, refresh_token: str) -> list[int | None]:
    """Statuses of the sandbox's answers to refresh requests presenting `refresh_token` (None: the
    request arrived and was never answered)."""
    rid = key_id(refresh_token)
    return [r["status"] for r in sandbox.log.records() if r["refresh_token_id"] == rid]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_refresh_is_redelivered_and_refreshes_exactly_once(
    private_redis: RedisServer,  # noqa: F811
    start_workers: Callable[..., list[Worker]],  # noqa: F811
    sandbox: SandboxServer,
    settings: Any,
    make_account: Callable[..., Any],
) -> None:
    # Given a due connection whose provider takes SLOW_MS to answer a token request
    settings.OAUTH_INTEGRATIONS = {"gmail": sandbox_integration(sandbox, f"slow{SLOW_MS}", name="gmail")}
    connection = connect(make_account(plan="pro", credits_mc=0), "gmail")
    make_due(connection)
    access, refresh = tokens_of(connection)
    # and two workers on a private Redis
    env = deployment_env(redis_url=private_redis.url(), sandbox=sandbox)
    workers = start_workers(env, "one", "two", transport_options=TRANSPORT_OPTIONS)

    # When the tick queues its refresh and the worker running it is killed while the request is
    # in flight at the provider
    with in_process_broker(private_redis.url()):
        assert oauth_refresh_tick() == 1
    wait_for(lambda: refreshes_presenting(sandbox, refresh) == [None], timeout=30, what="the refresh in flight")
    (running,) = [worker for worker in workers if "Task connections.tasks.oauth_connection_refresh[" in worker.log()]
    running.kill()

    # Then the provider never answered it (and so rotated nothing)
    assert refreshes_presenting(sandbox, refresh) == [None]
    connection.refresh_from_db()
    assert connection.last_refreshed_at is None

    # When the visibility timeout passes, the message goes to the other worker, which refreshes
    wait_for(
        lambda: OAuthConnection.objects.filter(pk=connection.pk, last_refreshed_at__isnull=False).exists(),
        timeout=30,
        what="the redelivered refresh",
        interval=0.2,
    )

    # Then exactly one refresh succeeded, from the token the connection had, and the grant lives
    assert refreshes_presenting(sandbox, refresh) == [None, 200]
    successful = [r for r in sandbox.log.records() if r["grant_type"] == "refresh_token" and r["status"] == 200]
    assert len(successful) == 1
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ACTIVE
    assert connection.consecutive_failures == 0
    new_access, new_refresh = tokens_of(connection)
    assert new_access != access
    assert new_refresh is not None and new_refresh != refresh
    userinfo = httpx2.get(f"{sandbox.oauth_base_url}/userinfo", headers={"Authorization": f"Bearer {new_access}"})
    assert userinfo.status_code == 200
    # and the stored refresh token is the live one: the provider takes it (and rotates it again)
    assert oauth.refresh_grant(oauth.get_integration("gmail"), refresh_token=new_refresh).access_token


@pytest.mark.django_db
def test_a_rotated_reply_lost_with_the_worker_asks_for_a_reconnect(
    sandbox: SandboxServer, settings: Any, make_account: Callable[..., Any]
) -> None:
    # Given a due connection
    settings.OAUTH_INTEGRATIONS = {"gmail": sandbox_integration(sandbox, name="gmail")}
    connection = connect(make_account(plan="pro", credits_mc=0), "gmail")
    make_due(connection)
    _, refresh = tokens_of(connection)
    # and a worker whose refresh reached the provider, which rotated the token, and then died
    # before the reply was stored (the reply is what this call returns: it is dropped)
    oauth.refresh_grant(oauth.get_integration("gmail"), refresh_token=refresh)

    # When the redelivered task runs
    outcome = oauth_connection_refresh(connection_id=connection.pk)

    # Then it presented the rotated token, the provider revoked the grant, and the user is asked
    # to reconnect, audited; no retry follows (a dead grant only comes back by reconnecting)
    assert outcome == "needs_reauth"
    assert refreshes_presenting(sandbox, refresh) == [200, 400]
    connection.refresh_from_db()
    assert (connection.status, connection.last_error_code) == (ConnectionStatus.NEEDS_REAUTH, OAUTH_NEEDS_REAUTH.code)
    assert (
        AuditEvent.objects.filter(event="oauth_connection.needs_reauth", outcome=OAUTH_NEEDS_REAUTH.code).count() == 1
    )
    assert oauth_connection_refresh(connection_id=connection.pk) == "inactive"
