"""Secrets, end to end: one canary through every flow, then a search of everything for it.

A random canary is embedded in a user's Anthropic and OpenAI keys (saved, tested, rotated to a
second canary key, failing validation in every way, used for routed calls that succeed, stream,
meet 401/429/500 and a cut stream, then disconnected). OAuth connections are made against the
sandbox's authorization server; its tokens are random (the sandbox picks them), so every access
and refresh token it issued, and each client secret, is a secret searched for too. The refresh
daemon runs for real: beat's messages go through a private Redis to a `celery -A niyra worker`
subprocess that refreshes (and, with the provider down, retries) through the sandbox.

Then everything is searched, as plaintext, hex and base64 (the Redis transport stores message
bodies in base64, pg_dump writes bytea as hex):
* every log record of this process at DEBUG from every logger (SQL and its parameters from every
  thread included), snapshotted before the redaction filter (the LeakTrap of
  tests/byok/test_never_leaked.py), and every task message it published;
* the worker's stdout/stderr at loglevel DEBUG (with the notification emails it sent: its mail
  backend is the console), and its log records and published messages
  captured inside the worker before any filter (tests/security/canary_support.py);
* every response the clients saw (headers and bodies), Niyra's native API's and the gateway's
  (the universal surface and each provider's own), and the raw bytes Niyra sent back on the
  wire (a recording proxy sits between the HTTP client and the live ASGI server). What the
  client *sends* is not searched (it carries the key when saving one), nor is the traffic from
  Niyra to the sandbox (the key legitimately goes to the provider);
* the whole Redis keyspace (cache and broker, every key of every type), with messages in flight
  (a retry waiting in the worker) and after the worker stopped;
* a plain-SQL `pg_dump` of the test database;
* ExceptionReporter's text, HTML and e-mail output for a forced 500;
* what operators see (issue 17): the metrics this process and the worker serve, every JSON log
  line this process wrote (the settings' console handler: its filters, then its formatter), and
  every Sentry event of the run (Sentry on with a capturing transport, the forced 500 included).

Positive controls show each search can see what it looks for: the key is found in what the
client sent, a marker passed to a task is found (base64) in the broker, a notification email
in the worker's output, a marker e-mail address in the dump, SQL from the server threads and
from the worker in the captured logs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sentry_sdk
from django.conf import settings
from django.db import connection as db_connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import Client
from django.utils import timezone
from django.views.debug import ExceptionReporter
from prometheus_client import generate_latest

from accounts.models import AuditEvent
from accounts.services import api_token_create
from accounts.support import support_group_sync
from byok import services
from byok.models import ProviderKey
from connections.models import OAuthConnection
from connections.services import connection_access_token_obtain
from core import errors
from core.metrics import exporter_registry
from core.sentry import sentry_init
from niyra.celery import app as celery_app
from notifications.models import EmailStatus, Kind, Notification
from sandbox import SandboxServer, client_secret_for, oauth_client_id
from scripts.local_postgres import client_program
from tests import conftest as root_conftest
from tests.byok import test_never_leaked
from tests.byok.test_never_leaked import LeakTrap, canary_key
from tests.connections.test_oauth_helpers import authorize, sandbox_integration, set_expiry, tokens_of
from tests.core.test_sentry import DSN as SENTRY_TEST_DSN
from tests.core.test_sentry import CapturingTransport
from tests.faults.services import current_database_url, free_port, in_process_broker, wait_for
from tests.log_lines import console_handler_into
from tests.routing import conftest as routing_conftest
from tests.security.canary_support import (
    CeleryWorker,
    Haystack,
    PrivateRedis,
    RecordingProxy,
    mask,
)

# Shared fixtures (assigned, not imported, so the test's parameters don't shadow an import).
trap = test_never_leaked.trap
live_asgi = routing_conftest.live_asgi
make_account = routing_conftest.make_account
store_key = routing_conftest.store_key

pytestmark = [pytest.mark.redis]

EXTRA_LOGGERS = ("celery", "kombu", "amqp", "niyra", "byok", "connections", "routing", "credits", "accounts", "uvicorn")
ROUTED_BEHAVIOURS = ("invalid", "ratelimit", "error", "cut")
VALIDATION_FAILURES = (("invalid", 400), ("overloaded", 503), ("error", 503), ("malformed", 503), ("hang", 503))
MODELS = {"anthropic": "claude-haiku-4-5", "openai": "gpt-4.1"}
# Where a routed call can be made with each provider's key: the native API, the universal
# surface and the provider's own API on the gateway.
ROUTES = {
    "anthropic": ("/api/llm/messages", "/v1/chat/completions", "/anthropic/v1/messages"),
    "openai": ("/api/llm/messages", "/v1/chat/completions", "/openai/v1/chat/completions"),
}
# How a stream ends when it was not cut: the native API's last event, the providers' own.
STREAM_END = {"/api/llm/messages": b"event: done", "/anthropic/v1/messages": b"message_stop"}


@dataclass
class Seen:
    """Every response a client saw, labelled by request."""

    responses: list[tuple[str, bytes]] = field(default_factory=list)

    def keep(self, response: httpx2.Response) -> httpx2.Response:
        request = response.request
        label = f"response to {request.method} {request.url.path} ({response.status_code})"
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
        self.responses.append((label, headers.encode() + b"\n\n" + response.content))
        return response


@dataclass
class Stack:
    """The running system: the live ASGI app behind a recording proxy, a private Redis as cache
    and broker, the worker, the sandbox (providers and OAuth server)."""

    redis: PrivateRedis
    proxy: RecordingProxy
    worker: CeleryWorker
    sandbox: SandboxServer
    client_ids: dict[str, str]  # integration -> client id, as this process has it configured
    worker_client_ids: dict[str, str]  # ... and as the worker has it (slack is "down" there)
    worker_metrics_url: str
    seen: Seen = field(default_factory=Seen)

    def client(self, *, token: str | None = None, session: str | None = None) -> httpx2.Client:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if session:
            headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={session}"
        return httpx2.Client(base_url=self.proxy.url, headers=headers, timeout=30)

    def client_secrets(self) -> dict[str, str]:
        ids = {*self.client_ids.values(), *self.worker_client_ids.values()}
        return {f"client secret of {cid.split('-')[0]} ({n})": client_secret_for(cid) for n, cid in enumerate(ids)}

    def issued_tokens(self) -> dict[str, str]:
        """Every access and refresh token the sandbox's OAuth server issued in this test (it keeps
        them in memory, reset per test); the random part, so a truncated print is caught too."""
        oauth = self.sandbox.oauth
        with oauth._lock:
            access, refresh = list(oauth._access), list(oauth._refresh)
        tokens = {f"OAuth access token #{n}": token for n, token in enumerate(access)}
        tokens |= {f"OAuth refresh token #{n}": token for n, token in enumerate(refresh)}
        return {name: token.split("_", 2)[2] for name, token in tokens.items()}

    def refreshes(self, integration: str, status: int) -> int:
        ids = {self.client_ids[integration], self.worker_client_ids[integration]}
        return sum(
            1
            for r in self.sandbox.log.records()
            if r["grant_type"] == "refresh_token" and r["client_id"] in ids and r["status"] == status
        )


@contextmanager
def _capture_every_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Widen the LeakTrap: SQL from every thread (the ASGI server runs requests in threads with
    their own connections), and the loggers it does not open (Celery, kombu, the apps), with the
    trap also on any logger that does not propagate to the root."""
    monkeypatch.setattr(BaseDatabaseWrapper, "queries_logged", property(lambda self: True))
    [keep] = [h for h in logging.getLogger().handlers if type(h).__name__ == "Keep"]  # the trap's
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate:
            monkeypatch.setattr(logger, "handlers", [keep, *logger.handlers])
    loggers = [logging.getLogger(name) for name in EXTRA_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@pytest.fixture
def stack(
    live_asgi: str,  # first: starting the ASGI app runs django.setup(), which reconfigures logging
    trap: LeakTrap,
    sandbox: SandboxServer,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    if not PrivateRedis.available():
        message = "needs the redis-server binary for a private keyspace"
        if root_conftest.REQUIRE_SERVICES:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    settings.ANTHROPIC_BASE_URL = sandbox.anthropic_base_url
    settings.OPENAI_BASE_URL = sandbox.openai_base_url
    # The trap's 0.5 s is tight for a first SDK call on a busy machine; `hang` waits this long.
    settings.PROVIDER_VALIDATION_TIMEOUT_SECONDS = 2.0
    client_ids = {name: oauth_client_id(name=name) for name in ("gmail", "slack")}
    worker_client_ids = {**client_ids, "slack": oauth_client_id("down", name="slack")}
    settings.OAUTH_INTEGRATIONS = {
        name: sandbox_integration(sandbox, name=name) | {"client_id": cid, "client_secret": client_secret_for(cid)}
        for name, cid in client_ids.items()
    }

    with (
        _capture_every_logger(monkeypatch),
        PrivateRedis(tmp_path) as redis,
        in_process_broker(redis.url()),
    ):
        metrics_port = free_port()
        cache_backend = "django.core.cache.backends.redis.RedisCache"
        settings.CACHES = {"default": {"BACKEND": cache_backend, "LOCATION": redis.url()}}
        env = {name: value for name, value in os.environ.items() if name != "CELERY_BROKER_URL"}
        env |= {
            "DJANGO_SETTINGS_MODULE": "niyra.settings.test",
            "DATABASE_URL": current_database_url(),
            "REDIS_URL": redis.url(),
            "ANTHROPIC_BASE_URL": sandbox.anthropic_base_url,
            "OPENAI_BASE_URL": sandbox.openai_base_url,
            "OAUTH_INTEGRATION_NAMES": ",".join(worker_client_ids),
            "EMAIL_URL": "consolemail://",  # the worker's outbox is its stdout, which is searched
            "METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        }
        for name, cid in worker_client_ids.items():
            prefix = f"OAUTH_{name.upper()}_"
            env |= {
                prefix + "CLIENT_ID": cid,
                prefix + "CLIENT_SECRET": client_secret_for(cid),
                prefix + "AUTHORIZE_URL": f"{sandbox.oauth_base_url}/authorize",
                prefix + "TOKEN_URL": f"{sandbox.oauth_base_url}/token",
                prefix + "REVOKE_URL": f"{sandbox.oauth_base_url}/revoke",
            }
        host, port = live_asgi.removeprefix("http://").split(":")
        worker_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        proxy = RecordingProxy((host, int(port)))
        worker = CeleryWorker(env=env, workdir=tmp_path, cwd=Path(settings.BASE_DIR))
        try:
            worker.start()  # it boots while the first flows run
            yield Stack(redis, proxy, worker, sandbox, client_ids, worker_client_ids, worker_metrics_url)
        finally:
            worker.stop()
            proxy.close()


# --- the flows ----------------------------------------------------------------------------------


def _key_flows(stack: Stack, canary: str, make_account: Callable[..., Any]) -> Any:
    """Save, list, test, rotate, every validation failure, routed calls, for both providers."""
    user = make_account(plan="pro", email="canary-owner@example.com")
    api = stack.client(token=api_token_create(user=user, name="canary").plaintext)
    keep = stack.seen.keep
    for provider in ("anthropic", "openai"):
        other = "openai" if provider == "anthropic" else "anthropic"

        def put(key: str, to: str = provider) -> int:
            return keep(api.put(f"/api/keys/{to}", json={"key": key})).status_code

        # (Statuses are compared through locals so that a failure message never shows a key.)
        saved = put(f'  "{canary_key(provider, canary)}"\n')
        assert saved == 200, provider
        assert keep(api.get("/api/keys")).status_code == 200
        assert keep(api.post(f"/api/keys/{provider}/test")).status_code == 200
        rotated = put(canary_key(provider, canary))  # to a second canary key
        assert rotated == 200, provider
        for word, expected in VALIDATION_FAILURES:
            refused = put(canary_key(provider, canary, word))
            assert refused == expected, (provider, word)
        wrong_provider = put(canary_key(provider, canary), to=other)
        pasted_with_words = put(f"{canary_key(provider, canary)} and some words")
        assert (wrong_provider, pasted_with_words) == (400, 400), provider
        for url, status, stream in _routed_calls(stack, api, provider):
            assert (status, stream.status_code) == (200, 200), (provider, url)
    return user


def _routed_calls(stack: Stack, api: httpx2.Client, provider: str) -> list[tuple[str, int, httpx2.Response]]:
    """On each route: a call and a streamed call; the route, the first one's status, the stream."""
    body = {"model": MODELS[provider], "messages": [{"role": "user", "content": "hello canary"}], "max_tokens": 50}
    calls = []
    for url in ROUTES[provider]:
        plain, streamed = (stack.seen.keep(api.post(url, json=body | {"stream": stream})) for stream in (False, True))
        calls.append((url, plain.status_code, streamed))
    return calls


def _routed_failures(stack: Stack, canary: str, make_account: Callable[..., Any], store_key: Any) -> None:
    """BYOK calls with keys the provider rejects (401), rate-limits (429), fails on (500), or
    whose stream it cuts. Stored directly: validation would refuse most of them."""
    for behaviour in ROUTED_BEHAVIOURS:
        user = make_account(plan="pro", email=f"canary-{behaviour}@example.com")
        api = stack.client(token=api_token_create(user=user, name="canary").plaintext)
        for provider in ("anthropic", "openai"):
            store_key(user, provider, canary_key(provider, canary, behaviour))
            for url, status, stream in _routed_calls(stack, api, provider):
                assert status >= 400, (behaviour, provider, url, status)
                if behaviour == "cut":  # the stream started, then the provider hung up mid-way
                    assert stream.status_code == 200, (provider, url)
                    assert STREAM_END.get(url, b"data: [DONE]") not in stream.content, (provider, url)


def _oauth_connect(stack: Stack, api: httpx2.Client, browser: httpx2.Client, integration: str) -> OAuthConnection:
    start = stack.seen.keep(api.post(f"/api/oauth/connections/{integration}/connect"))
    assert start.status_code in (200, 201), start.status_code
    query = authorize(start.json()["authorize_url"])  # the provider's consent screen (the sandbox)
    landed = stack.seen.keep(browser.get(f"/oauth/callback/{integration}", params=query))
    assert landed.status_code == 302, landed.status_code
    return OAuthConnection.objects.get(integration=integration)


def _forced_500(
    stack: Stack, api: httpx2.Client, canary: str, trap: LeakTrap, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """A bug after validation, while the plaintext is in the service's locals: ExceptionReporter's
    text, HTML and e-mail output for it."""

    def audit_store_down(**kwargs: Any) -> None:
        raise RuntimeError("audit store down")

    with monkeypatch.context() as patch:
        patch.setattr(services, "audit_event_record", audit_store_down)
        response = stack.seen.keep(api.put("/api/keys/anthropic", json={"key": canary_key("anthropic", canary)}))
    assert response.status_code == 500
    failure = [r for r in trap.records if r.exc_info and r.name == "core.exception_handler"][-1]
    requests = [r.request for r in trap.records if r.name == "django.request" and hasattr(r, "request")]
    assert failure.exc_info is not None
    request = requests[-1] if requests else None
    reports: list[str] = []
    for is_email in (False, True):
        reporter = ExceptionReporter(request, *failure.exc_info, is_email=is_email)
        reports += [reporter.get_traceback_text(), reporter.get_traceback_html()]
    assert "provider_key_save" in reports[0] and "audit store down" in reports[0]  # a real report
    return reports


def _pg_dump() -> bytes:
    db = db_connection.settings_dict
    command = [str(client_program("pg_dump")), "--format=plain", f"--dbname={current_database_url()}"]
    env = {**os.environ, "PGPASSWORD": db["PASSWORD"] or ""}
    return subprocess.run(command, check=True, capture_output=True, timeout=60, env=env).stdout


@pytest.fixture
def stack_json_lines() -> Iterator[Callable[[], io.StringIO]]:
    """`stack_json_lines()`: from then on, every record any logger passes on, written as the
    settings' console handler writes it (its filters, then its JSON formatter)."""
    buffer = io.StringIO()
    handler = console_handler_into(buffer)
    root = logging.getLogger()
    try:
        yield lambda: root.addHandler(handler) or buffer
    finally:
        root.removeHandler(handler)


@pytest.fixture
def stack_sentry() -> Iterator[Callable[[], CapturingTransport]]:
    """`stack_sentry()`: Sentry on from then on, as a DSN turns it on, its events captured."""
    transport = CapturingTransport()
    started: list[bool] = []

    def start() -> CapturingTransport:
        started.append(sentry_init(dsn=SENTRY_TEST_DSN, environment="test", transport=transport))
        return transport

    try:
        yield start
    finally:
        if started:
            sentry_sdk.get_client().close()
            sentry_sdk.get_global_scope().set_client(None)


# --- the test -----------------------------------------------------------------------------------


def test_no_secret_appears_anywhere_after_every_flow(
    stack: Stack,
    trap: LeakTrap,
    stack_json_lines: Callable[[], io.StringIO],
    stack_sentry: Callable[[], CapturingTransport],
    make_account: Callable[..., Any],
    make_user: Callable[..., Any],
    store_key: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary = "canary" + secrets.token_hex(12)
    control = "control" + secrets.token_hex(12)  # put where it must be found: proves the search sees
    keep = stack.seen.keep
    json_lines = stack_json_lines()
    sentry_events = stack_sentry()

    # Keys: both providers, every path; routed calls that succeed, stream, and fail.
    owner = _key_flows(stack, canary, make_account)
    _routed_failures(stack, canary, make_account, store_key)

    # OAuth: connect through the API and the browser callback (signed in with a session cookie).
    session = Client()
    session.force_login(owner)
    api = stack.client(token=api_token_create(user=owner, name="oauth").plaintext)
    browser = stack.client(session=session.cookies[settings.SESSION_COOKIE_NAME].value)
    gmail = _oauth_connect(stack, api, browser, "gmail")
    slack = _oauth_connect(stack, api, browser, "slack")
    keep(api.get("/api/oauth/connections"))
    for page in ("/settings/byok/", "/settings/connections/"):
        assert keep(browser.get(page)).status_code == 200, page

    # The refresh daemon through the real broker and worker: beat's messages (the tick fans out
    # one refresh per due connection; slack's provider is down for the worker, so it retries).
    stack.worker.wait_ready()
    for connection in (gmail, slack):
        set_expiry(connection, timezone.now() + timedelta(seconds=100))
    for entry in celery_app.conf.beat_schedule.values():
        celery_app.send_task(entry["task"], **entry.get("options", {}))  # what beat sends
    wait_for(lambda: stack.refreshes("gmail", 200) >= 1, timeout=30, what="the worker's gmail refresh")
    wait_for(lambda: stack.refreshes("slack", 503) >= 1, timeout=30, what="the worker's slack refresh attempt")
    retried = "connections.tasks.oauth_connection_refresh", "retry"
    wait_for(lambda: stack.worker.executed(*retried), timeout=30, what="the worker to retry slack's refresh")

    # Support: every admin page a support user reads, then "refresh now" (through the worker)
    # and a disconnect from the admin.
    staff = make_user("support@niyra.ai", is_staff=True)
    staff.groups.add(support_group_sync())
    support = Client()
    support.force_login(staff)
    admin = stack.client(session=support.cookies[settings.SESSION_COOKIE_NAME].value)
    pages = [
        "/admin/accounts/user/?q=canary",
        f"/admin/accounts/user/{owner.pk}/change/",
        "/admin/byok/providerkey/",
        "/admin/connections/oauthconnection/",
        "/admin/accounts/auditevent/",
        f"/admin/byok/providerkey/?user__id__exact={owner.pk}",
        f"/admin/accounts/auditevent/?subject__id__exact={owner.pk}",
    ]
    pages += [f"/admin/byok/providerkey/{pk}/change/" for pk in ProviderKey.objects.values_list("pk", flat=True)]
    pages += [f"/admin/connections/oauthconnection/{pk}/change/" for pk in (gmail.pk, slack.pk)]
    pages += [f"/admin/accounts/auditevent/{pk}/change/" for pk in AuditEvent.objects.values_list("pk", flat=True)]
    for page in pages:
        assert keep(admin.get(page)).status_code == 200, page
    refreshed = stack.refreshes("gmail", 200)
    action = {"action": "refresh_now", "_selected_action": [gmail.pk]}
    assert trap.keep(support.post("/admin/connections/oauthconnection/", action)).status_code == 302
    wait_for(lambda: stack.refreshes("gmail", 200) > refreshed, timeout=30, what="support's refresh via the worker")
    victim = ProviderKey.objects.exclude(user=owner).first()
    assert victim is not None
    action = {"action": "disconnect", "_selected_action": [victim.pk]}
    assert trap.keep(support.post("/admin/byok/providerkey/", action)).status_code == 302

    # On demand, in this process, within the margin.
    set_expiry(gmail, timezone.now() + timedelta(seconds=30))
    connection_access_token_obtain(user=owner, integration="gmail")
    vault_tokens = {t for c in (gmail, slack) for t in tokens_of(c) if t}

    # What users were told: the routed 401s and 429s above made key-problem notifications,
    # emailed by the worker (printed to its stdout); support reads them in the admin.
    told = Notification.objects.filter(kind=Kind.KEY_PROBLEM)
    wait_for(lambda: told.filter(email_status=EmailStatus.SENT).exists(), timeout=30, what="a notification email")
    for page in ["/admin/notifications/notification/"] + [
        f"/admin/notifications/notification/{pk}/change/" for pk in Notification.objects.values_list("pk", flat=True)
    ]:
        assert keep(admin.get(page)).status_code == 200, page

    # A forced 500, and its error reports.
    reports = _forced_500(stack, api, canary, trap, monkeypatch)

    # A marker task held by the worker (its ETA is an hour away): a message in flight.
    celery_app.send_task("core.tasks.echo", kwargs={"value": control, "cache_key": "control"}, countdown=3600)
    wait_for(lambda: stack.worker.executed("core.tasks.echo", "received"), timeout=30, what="the marker held")
    in_flight = list(stack.redis.keyspace())

    # Disconnect everything (the OAuth ones revoke at the provider).
    for path in ("/api/keys/anthropic", "/api/keys/openai", "/api/oauth/connections/gmail"):
        assert keep(api.delete(path)).status_code == 204, path
    keep(api.delete("/api/oauth/connections/slack"))
    make_user(f"{control}@example.com")  # the marker in the database

    worker_metrics = httpx2.get(stack.worker_metrics_url, timeout=10).text
    own_metrics = generate_latest(exporter_registry()).decode()
    stack.worker.stop()
    after = list(stack.redis.keyspace())
    dump = _pg_dump()

    # --- Everything, labelled ---------------------------------------------------------------------
    haystack = Haystack()
    haystack.add("log records of the test process (before the redaction filter)", trap.log_text())
    for n, message in enumerate(trap.task_messages):
        haystack.add(f"task message #{n} published by the test process", message)
    for label, data in stack.seen.responses:
        haystack.add(label, data)
    haystack.add("Django test client responses (admin actions)", trap.response_text())
    haystack.add("bytes Niyra sent to the client on the wire", bytes(stack.proxy.from_niyra))
    haystack.add("worker stdout+stderr (loglevel DEBUG)", stack.worker.output())
    haystack.add("worker log records and published messages (before any filter)", stack.worker.raw_log())
    for label, data in in_flight:
        haystack.add(f"{label}, worker running", data)
    for label, data in after:
        haystack.add(f"{label}, worker stopped", data)
    haystack.add("pg_dump of the test database", dump)
    for n, report in enumerate(reports):
        haystack.add(f"ExceptionReporter {('text', 'html', 'e-mail text', 'e-mail html')[n]} of the forced 500", report)
    haystack.add("metrics served by this process (the gateway, the API)", own_metrics)
    haystack.add("metrics served by the worker", worker_metrics)
    haystack.add("JSON log lines of this process (as the console handler writes them)", json_lines.getvalue())
    for number, envelope in enumerate(sentry_events.envelopes):
        haystack.add(f"Sentry envelope {number} ({envelope.description})", envelope.serialize())

    # --- The searches can see: positive controls -------------------------------------------------
    sent = Haystack()  # what the client sent carries the key by design: searched only as a control
    sent.add("bytes the client sent to Niyra", bytes(stack.proxy.to_niyra))
    assert sent.find(canary[6:]), "the key is not in what the client sent: the wire is not recorded"
    assert any("[base64" in hit for hit in haystack.find(control, only="redis")), "the marker is not in the broker"
    assert haystack.find(control, only="pg_dump"), "the marker is not in the dump"
    sql_seen = [r for r in trap.records if r.name == "django.db.backends" and "byok_providerkey" in r.getMessage()]
    assert {r.threadName for r in sql_seen} - {"MainThread"}, "no SQL from the server's threads was captured"
    assert any(r.name.startswith("routing.gateway") for r in trap.records), "none of the gateway's logs was captured"
    assert "byok_oauthconnection" in stack.worker.raw_log(), "no SQL from the worker was captured"
    assert stack.worker.executed("connections.tasks.oauth_refresh_tick") >= 1
    assert "Subject: Niyra: " in stack.worker.output(), "no notification email in the worker's outbox"
    assert stack.worker.executed("connections.tasks.oauth_connection_refresh") >= 3
    assert any("_kombu.binding" in label for label, _ in in_flight), [label for label, _ in in_flight]
    assert 'outcome="' + errors.KEY_REJECTED.code + '"' in own_metrics, "no refused call in the metrics"
    assert "niyra_celery_tasks_total{" in worker_metrics, "no task in the worker's metrics"
    assert '"logger": "niyra.requests"' in json_lines.getvalue(), "no request line among the JSON lines"
    assert any("audit store down" in json.dumps(event) for event in sentry_events.events()), "no Sentry event"

    # --- The secrets, and the search -------------------------------------------------------------
    tokens = stack.issued_tokens()
    # (Booleans, so that a failure message shows no token.)
    vault_tokens_were_issued = {t.split("_", 2)[2] for t in vault_tokens} <= set(tokens.values())
    assert vault_tokens_were_issued and len(tokens) >= 8, len(tokens)
    needles = {"the canary (in every provider key)": canary[6:], **tokens, **stack.client_secrets()}
    hits = {name: haystack.find(needle) for name, needle in needles.items()}
    leaks = {name: places for name, places in hits.items() if places}
    report = "\n".join(f"{name} found in: " + "; ".join(places) for name, places in leaks.items())
    leaked = bool(leaks)  # the message names places only, with any secret in a label masked
    assert not leaked, mask(f"secrets leaked (searched {haystack.total_bytes():,} bytes):\n{report}", needles)
