"""Canary keys: a unique random string inside every key, followed through every path.

Save, test, rotate, disconnect, failed validation, every provider error, admin pages and a 500
with DEBUG off. The canary must appear in no log record at any level (the root logger and the
SDK loggers are captured at DEBUG, SQL included, *without* the redaction filter: that filter is
the second line of defence, these tests check the first), no response body or header, no admin
page, no audit row, no exception report, no Celery message, no cache entry, and in the database
only as ciphertext.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.signals import before_task_publish
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.views.debug import ExceptionReporter
from rest_framework.test import APIClient

from accounts.models import AuditEvent, User
from byok import services
from byok.models import ProviderKey
from byok.selectors import provider_key_plaintext
from core import errors

pytestmark = pytest.mark.django_db

PREFIXES = {"anthropic": "sk-ant-api03-", "openai": "sk-proj-"}
OTHER = {"anthropic": "openai", "openai": "anthropic"}
LOGGERS = ("", "anthropic", "openai", "httpx2", "httpcore2", "django", "django.request", "django.db.backends")


class LeakTrap:
    """Collects everything that leaves the code: log records, responses, task messages."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self.snapshots: list[str] = []
        self.responses: list[Any] = []
        self.task_messages: list[str] = []
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def capture(self, record: logging.LogRecord) -> None:
        """Snapshot the record as it was logged, before any handler's filter (the redaction
        filter rewrites records in place) has touched it."""
        self.records.append(record)
        self.snapshots.append(self._formatter.format(record))  # message, traceback, stack info
        self.snapshots.append(repr(vars(record)))  # args, extras, the exception object itself

    def log_text(self) -> str:
        return "\n".join(self.snapshots)

    def response_text(self) -> str:
        return "\n".join(f"{r.status_code} {sorted(r.items())} {r.content!r}" for r in self.responses)

    def keep(self, response: Any) -> Any:
        self.responses.append(response)
        return response


@pytest.fixture
def trap(settings: Any) -> Iterator[LeakTrap]:
    trap = LeakTrap()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            trap.capture(record)

    handler = Keep(level=logging.DEBUG)
    loggers = {name: logging.getLogger(name) for name in LOGGERS}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.DEBUG)
    root = loggers[""]
    root.handlers.insert(0, handler)  # first: it must see records before the redaction filter
    connection.force_debug_cursor = True  # every SQL statement and its parameters, logged at DEBUG

    def on_publish(body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        trap.task_messages.append(repr((body, headers)))

    before_task_publish.connect(on_publish, weak=False)
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"byok_save": "1000/hour", "byok_test": "1000/hour"},
    }
    settings.PROVIDER_VALIDATION_TIMEOUT_SECONDS = 0.5
    try:
        yield trap
    finally:
        before_task_publish.disconnect(on_publish)
        connection.force_debug_cursor = False
        root.removeHandler(handler)
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def everything_in_the_database() -> list[tuple[str, Any]]:
    """Every value of every column of every table (SELECT *): text, bytea and JSON included."""
    values = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - introspected, quoted name
            for row in cursor.fetchall():
                values.extend((table, value) for value in row)
    return values


def everything_in_the_cache() -> list[bytes]:
    backend: Any = cache
    if settings.USING_REDIS:
        client = backend._cache.get_client()
        return [key + (client.dump(key) or b"") for key in client.scan_iter()]
    return [repr(item).encode() for item in getattr(backend, "_cache", {}).items()]


def assert_never_leaked(canary: str, trap: LeakTrap) -> None:
    needles = (canary, canary[6:])  # the random part alone, too
    log_text = trap.log_text()
    assert trap.records, "the trap saw no log records at all: it is not wired up"
    for needle in needles:
        assert needle not in log_text, "a log record carries the key"
        assert needle not in trap.response_text(), "a response carries the key"
        assert all(needle not in message for message in trap.task_messages), "a task message carries the key"
        for event in AuditEvent.objects.all().values():
            assert needle not in repr(event), f"audit row {event['event']} carries the key"
        for table, value in everything_in_the_database():
            if isinstance(value, (bytes, memoryview)):
                assert needle.encode() not in bytes(value), f"{table} holds the key as plaintext bytes"
            else:
                assert needle not in repr(value), f"{table} holds the key"
        for entry in everything_in_the_cache():
            assert needle.encode() not in entry, "the cache holds the key"


def canary_key(provider: str, canary: str, *words: str) -> str:
    return PREFIXES[provider] + "".join(f"{w}-" for w in words) + f"{canary}-{secrets.token_hex(4)}"


@pytest.fixture
def canary() -> str:
    return "canary" + secrets.token_hex(12)


@pytest.fixture
def admin_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser(email="support@niyra.ai", password="x"))
    return client


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_key_never_leaks_through_any_path(
    provider: str,
    canary: str,
    trap: LeakTrap,
    pro_user: Any,
    pro_client: APIClient,
    make_plan_user: Callable[..., Any],
    client_for: Callable[[Any], APIClient],
    admin_client: Client,
) -> None:
    def put(key: str, *, client: APIClient = pro_client, to: str = provider) -> Any:
        return trap.keep(client.put(f"/api/keys/{to}", {"key": key}, format="json"))

    def key(*words: str) -> str:
        return canary_key(provider, canary, *words)

    # Save, list, test, rotate.
    assert put(f'  "{key()}"\n').status_code == 200
    assert trap.keep(pro_client.get("/api/keys")).status_code == 200
    assert trap.keep(pro_client.post(f"/api/keys/{provider}/test")).status_code == 200
    assert put(key()).status_code == 200
    # Failed validation and every provider error: the stored key stays, the new one goes nowhere.
    for words, status in [
        (("invalid",), 400),
        (("overloaded",), 503),
        (("error",), 503),
        (("malformed",), 503),
        (("hang",), 503),
    ]:
        assert put(key(*words)).status_code == status, words
    # Genuine but limited keys are stored; testing them goes through the same paths.
    for words in (("ratelimit",), ("noquota",)):
        assert put(key(*words)).status_code == 200
        assert trap.keep(pro_client.post(f"/api/keys/{provider}/test")).status_code == 200
    # A key the provider starts rejecting, tested.
    stored_invalid = put(key())
    assert stored_invalid.status_code == 200
    services.provider_key_mark_invalid(user=pro_user, provider=provider)
    # Wrong provider, malformed paste, plan without BYOK.
    assert put(key(), to=OTHER[provider]).status_code == 400
    assert put(f"{key()} and some words").status_code == 400
    assert put(key(), client=client_for(make_plan_user("free"))).status_code == 403
    # Admin: the changelist, every change page, the audit trail; then disconnect from there.
    other = make_plan_user("pro")
    assert put(key(), client=client_for(other)).status_code == 200
    trap.keep(admin_client.get("/admin/byok/providerkey/"))
    for pk in ProviderKey.objects.values_list("pk", flat=True):
        assert trap.keep(admin_client.get(f"/admin/byok/providerkey/{pk}/change/")).status_code == 200
    trap.keep(admin_client.get("/admin/accounts/auditevent/"))
    for pk in AuditEvent.objects.values_list("pk", flat=True):
        assert trap.keep(admin_client.get(f"/admin/accounts/auditevent/{pk}/change/")).status_code == 200
    disconnect = {"action": "disconnect", "_selected_action": [ProviderKey.objects.get(user=other).pk]}
    assert trap.keep(admin_client.post("/admin/byok/providerkey/", disconnect)).status_code == 302
    # Disconnect through the API.
    assert trap.keep(pro_client.delete(f"/api/keys/{provider}")).status_code == 204
    assert not ProviderKey.objects.exists()

    assert_never_leaked(canary, trap)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_database_holds_the_key_only_as_ciphertext(
    provider: str, canary: str, trap: LeakTrap, pro_client: APIClient
) -> None:
    key = canary_key(provider, canary)
    assert trap.keep(pro_client.put(f"/api/keys/{provider}", {"key": key}, format="json")).status_code == 200
    stored = ProviderKey.objects.get()
    assert key.encode() not in bytes(stored.ciphertext)
    assert provider_key_plaintext(stored) == key
    assert_never_leaked(canary, trap)


def test_a_500_with_debug_off_reports_nothing_of_the_key(
    canary: str, trap: LeakTrap, pro_client: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected failure after validation, while the plaintext is in the service's locals."""
    assert settings.DEBUG is False

    def audit_store_down(**kwargs: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(services, "audit_event_record", audit_store_down)
    response = trap.keep(pro_client.put("/api/keys/anthropic", {"key": canary_key("anthropic", canary)}, format="json"))

    assert response.status_code == 500
    assert response.json()["code"] == errors.INTERNAL_ERROR.code
    assert not ProviderKey.objects.exists()  # the transaction rolled back
    [failure] = [r for r in trap.records if r.exc_info and r.name == "core.exception_handler"]
    [logged_request] = [r for r in trap.records if r.name == "django.request" and hasattr(r, "request")]
    assert failure.exc_info is not None
    reporter = ExceptionReporter(logged_request.request, *failure.exc_info)
    text, html = reporter.get_traceback_text(), reporter.get_traceback_html()
    # The report is a real one: it walks through the service and hides its locals.
    assert "provider_key_save" in text and "audit store down" in text
    assert "********************" in text
    for needle in (canary, canary[6:]):
        assert needle not in text and needle not in html
    email = ExceptionReporter(logged_request.request, *failure.exc_info, is_email=True)
    assert canary not in email.get_traceback_text() and canary not in email.get_traceback_html()
    assert_never_leaked(canary, trap)


@pytest.mark.parametrize("where", ["save", "test"])
def test_services_hide_the_key_from_error_reports_whoever_calls_them(
    where: str, canary: str, pro_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admin actions, tasks and the dispatcher call services outside any decorated view: a bug
    while the plaintext is in a service's locals must not put it in the report."""
    key = canary_key("openai", canary)
    if where == "test":
        services.provider_key_save(user=pro_user, provider="openai", key=key)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("something broke")

    # save: after validation, before encryption; test: just before the provider call.
    monkeypatch.setattr(services, "get_keyring" if where == "save" else "get_adapter", broken)
    with pytest.raises(RuntimeError) as caught:
        if where == "save":
            services.provider_key_save(user=pro_user, provider="openai", key=key)
        else:
            services.provider_key_test(user=pro_user, provider="openai")
    # From the service's frame down (the test's own frame holds the key, of course).
    reporter = ExceptionReporter(None, caught.type, caught.value, caught.tb.tb_next)
    html = reporter.get_traceback_html()  # the HTML report (and the admins' email) shows locals
    assert f"provider_key_{where}" in html and "********************" in html
    assert canary not in html and canary not in reporter.get_traceback_text()


def test_no_task_is_queued_with_a_key(canary: str, trap: LeakTrap, pro_client: APIClient) -> None:
    pro_client.put("/api/keys/openai", {"key": canary_key("openai", canary)}, format="json")
    pro_client.post("/api/keys/openai/test")
    pro_client.delete("/api/keys/openai")
    assert trap.task_messages == []  # BYOK queues nothing: no key can ride in a task argument
