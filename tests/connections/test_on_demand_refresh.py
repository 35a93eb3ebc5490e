"""On-demand refresh after a 401: an integration call whose token the provider refuses, although
Niyra thought it fresh, refreshes once (single-flight with the daemon) and is retried once.

The sandbox is the provider: `/oauth/userinfo` answers 401 to an access token it no longer
accepts. A connection is made with 1-second access tokens (the sandbox's lifetime, not Niyra's:
Niyra is told the token lives an hour), so after a second the sandbox rejects a token that
Niyra's `expires_at` calls fresh — the case the daemon cannot foresee.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from django.db import connections

from connections.models import ConnectionStatus, OAuthConnection
from connections.selectors import connection_ids_due
from connections.services import TokenRejected, connection_call, connection_refresh, connection_token_rejected
from connections.tasks import oauth_connection_refresh
from core.errors import OAUTH_NEEDS_REAUTH, OAUTH_PROVIDER_UNAVAILABLE, NiyraError
from sandbox import SandboxServer
from tests.connections import test_oauth_helpers as helpers
from tests.connections.test_oauth_helpers import Clock, connect, refresh_requests, set_expiry, tokens_of

# Shared fixtures (assigned, not imported, so the test functions' parameters don't shadow an import).
clock = helpers.clock
integrations = helpers.integrations


class Provider:
    """An integration call: the sandbox's userinfo with the token given; 401 -> TokenRejected.
    Records the tokens it was given (the test compares them with the vault's)."""

    def __init__(self, sandbox: SandboxServer) -> None:
        self.url = f"{sandbox.oauth_base_url}/userinfo"
        self.seen: list[str] = []

    def __call__(self, token: str) -> dict[str, Any]:
        self.seen.append(token)
        response = httpx2.get(self.url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        if response.status_code == 401:
            raise TokenRejected
        response.raise_for_status()
        return dict(response.json())

    def accepts(self, token: str) -> bool:
        return httpx2.get(self.url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200


def stale_connection(
    user: Any, sandbox: SandboxServer, clock: Clock, *, expires_in: float = 3000, integration: str = "gmail"
) -> OAuthConnection:
    """A connection whose access token the sandbox rejects while Niyra's `expires_at` is
    `expires_in` seconds away. Tokens issued afterwards live the sandbox's default hour."""
    sandbox.access_token_ttl = 1
    connection = connect(user, integration)
    sandbox.access_token_ttl = 3600
    set_expiry(connection, clock() + timedelta(seconds=expires_in))
    old_access, _ = tokens_of(connection)
    deadline = time.monotonic() + 5
    while Provider(sandbox).accepts(old_access):
        assert time.monotonic() < deadline, "the sandbox kept accepting the 1-second token"
        time.sleep(0.1)
    sandbox.log.clear()
    return connection


@pytest.mark.django_db
def test_a_rejected_token_is_refreshed_once_and_the_call_retried_once(
    integrations: Callable[..., str], make_plan_user: Callable[..., Any], clock: Clock, sandbox: SandboxServer
) -> None:
    # Given a connection Niyra thinks fresh (50 minutes left) whose token the provider refuses
    integrations("gmail")
    connection = stale_connection(make_plan_user("pro"), sandbox, clock)
    old_access, old_refresh = tokens_of(connection)
    provider = Provider(sandbox)

    # When an integration call goes through connection_call
    answer = connection_call(user=connection.user, integration="gmail", call=provider)

    # Then the call ran twice, first with the rejected token, then with the one refresh's token
    new_access, new_refresh = tokens_of(connection)
    assert provider.seen == [old_access, new_access] and new_access != old_access
    assert answer["scope"] == "mail.read mail.send"
    assert [r["status"] for r in refresh_requests(sandbox)] == [200]
    assert old_refresh is not None and sandbox.log.count_refresh(old_refresh) == 1
    assert new_refresh not in (None, old_refresh)
    assert (connection.status, connection.last_refreshed_at) == (ConnectionStatus.ACTIVE, clock())
    assert connection.expires_at == clock() + timedelta(seconds=3600)


@pytest.mark.django_db
def test_a_second_401_is_the_callers_and_nothing_is_refreshed_again(
    integrations: Callable[..., str], make_plan_user: Callable[..., Any], clock: Clock, sandbox: SandboxServer
) -> None:
    integrations("gmail")
    connection = connect(make_plan_user("pro"))
    sandbox.log.clear()
    seen: list[str] = []

    def always_refused(token: str) -> None:
        seen.append(token)
        raise TokenRejected

    with pytest.raises(TokenRejected):
        connection_call(user=connection.user, integration="gmail", call=always_refused)

    # One retry with the refreshed token, one refresh; the connection itself is fine
    assert len(seen) == 2 and seen[1] == tokens_of(connection)[0] != seen[0]
    assert len(refresh_requests(sandbox)) == 1
    assert (connection.status, connection.consecutive_failures) == (ConnectionStatus.ACTIVE, 0)


@pytest.mark.django_db
def test_a_call_that_works_does_not_refresh_and_other_errors_pass_through(
    integrations: Callable[..., str], make_plan_user: Callable[..., Any], sandbox: SandboxServer
) -> None:
    integrations("gmail")
    connection = connect(make_plan_user("pro"))
    sandbox.log.clear()
    provider = Provider(sandbox)

    assert connection_call(user=connection.user, integration="gmail", call=provider)["scope"]
    assert provider.seen == [tokens_of(connection)[0]]

    def broken(token: str) -> None:
        raise ValueError("the provider answered 500")

    with pytest.raises(ValueError, match="500"):
        connection_call(user=connection.user, integration="gmail", call=broken)
    assert refresh_requests(sandbox) == []


@pytest.mark.django_db
def test_a_token_refreshed_meanwhile_is_returned_without_a_token_endpoint_call(
    integrations: Callable[..., str], make_plan_user: Callable[..., Any], clock: Clock, sandbox: SandboxServer
) -> None:
    integrations("gmail")
    connection = connect(make_plan_user("pro"))
    old_access, _ = tokens_of(connection)
    assert connection_refresh(connection_id=connection.pk, force=True).outcome == "refreshed"  # the daemon
    new_access, _ = tokens_of(connection)
    sandbox.log.clear()

    token = connection_token_rejected(user=connection.user, integration="gmail", rejected_token=old_access)

    assert token == new_access != old_access
    assert refresh_requests(sandbox) == []


@pytest.mark.django_db
def test_invalid_grant_on_demand_makes_the_connection_need_a_reconnect(
    integrations: Callable[..., str], make_plan_user: Callable[..., Any], clock: Clock, sandbox: SandboxServer
) -> None:
    integrations("gmail", "revoked")  # the code exchange works; every refresh is invalid_grant
    connection = stale_connection(make_plan_user("pro"), sandbox, clock)
    provider = Provider(sandbox)

    with pytest.raises(NiyraError) as caught:
        connection_call(user=connection.user, integration="gmail", call=provider)

    assert caught.value.spec == OAUTH_NEEDS_REAUTH
    assert len(provider.seen) == 1  # no retry with a token that could not be renewed
    connection.refresh_from_db()
    assert (connection.status, connection.last_error_reason) == (ConnectionStatus.NEEDS_REAUTH, "invalid_grant")


@pytest.mark.django_db
def test_a_transient_failure_on_demand_says_so_and_the_rejected_token_counts_as_expired(
    integrations: Callable[..., str], make_plan_user: Callable[..., Any], clock: Clock, sandbox: SandboxServer
) -> None:
    integrations("gmail")
    connection = stale_connection(make_plan_user("pro"), sandbox, clock)
    integrations("gmail", "down")  # the token endpoint answers 503 from now on
    provider = Provider(sandbox)

    with pytest.raises(NiyraError) as caught:
        connection_call(user=connection.user, integration="gmail", call=provider)

    assert caught.value.spec == OAUTH_PROVIDER_UNAVAILABLE
    assert len(provider.seen) == 1
    connection.refresh_from_db()
    assert (connection.status, connection.consecutive_failures) == (ConnectionStatus.ACTIVE, 1)
    assert connection.last_error_reason == "http_503"
    # Dead whatever Niyra had computed: the next tick refreshes it, and no caller is handed it.
    assert connection.expires_at == clock()
    assert connection_ids_due() == [connection.pk]


# --- Racing the daemon (real threads, real row locks) ------------------------------------------------


def _wait_for_pending_refresh(sandbox: SandboxServer) -> None:
    deadline = time.monotonic() + 10
    while not refresh_requests(sandbox):
        assert time.monotonic() < deadline, "the refresh never reached the sandbox"
        time.sleep(0.01)


def _in_thread(work: Callable[[], Any], results: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            results.append(work())
        except Exception as exc:  # reported to the test
            results.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("first", ["daemon", "on_demand", "together"])
def test_the_daemon_and_an_on_demand_caller_refresh_a_stale_token_once(
    first: str,
    integrations: Callable[..., str],
    make_plan_user: Callable[..., Any],
    clock: Clock,
    sandbox: SandboxServer,
) -> None:
    # Given a token the provider refuses, that the daemon also finds due (200 s left: inside the
    # tick's window, outside the on-demand margin), and a slow token endpoint (300 ms)
    integrations("gmail", "slow300")
    connection = stale_connection(make_plan_user("pro"), sandbox, clock, expires_in=200)
    _, old_refresh = tokens_of(connection)
    provider = Provider(sandbox)
    daemon: list[Any] = []
    on_demand: list[Any] = []

    def call() -> Any:
        return connection_call(user=connection.user, integration="gmail", call=provider)

    # When the daemon's task and an on-demand caller both act on it
    if first == "daemon":
        thread = _in_thread(lambda: oauth_connection_refresh(connection_id=connection.pk), daemon)
        _wait_for_pending_refresh(sandbox)  # the daemon holds the row lock now
        on_demand.append(call())  # the old token is refused; it waits for the lock, re-reads
        thread.join(15)
    elif first == "on_demand":
        thread = _in_thread(call, on_demand)
        _wait_for_pending_refresh(sandbox)  # the caller holds the row lock now
        daemon.append(oauth_connection_refresh(connection_id=connection.pk))
        thread.join(15)
        daemon.append(oauth_connection_refresh(connection_id=connection.pk))  # e.g. redelivered
    else:
        start = threading.Barrier(2)
        threads = [
            _in_thread(lambda: (start.wait(), oauth_connection_refresh(connection_id=connection.pk))[1], daemon),
            _in_thread(lambda: (start.wait(), call())[1], on_demand),
        ]
        for thread in threads:
            thread.join(15)

    # Then the token endpoint was called once, and both ended with the new token
    assert not [r for r in daemon + on_demand if isinstance(r, Exception)], (daemon, on_demand)
    assert [r["status"] for r in refresh_requests(sandbox)] == [200]
    assert old_refresh is not None and sandbox.log.count_refresh(old_refresh) == 1
    new_access, _ = tokens_of(connection)
    assert provider.seen[-1] == new_access and provider.accepts(new_access)
    assert on_demand[0]["scope"] == "mail.read mail.send"
    expected = {
        "daemon": ["refreshed"],
        "on_demand": ["locked", "fresh"],  # skipped while the caller refreshed; fresh on redelivery
        "together": None,
    }[first]
    if expected is not None:
        assert daemon == expected
    else:
        assert daemon in (["refreshed"], ["locked"], ["fresh"])
    assert connection.status == ConnectionStatus.ACTIVE
