"""Error reports (core.sentry): nothing without a DSN; with one, a failure in a Django view, in
the API, in a Celery task and in an asyncio task is reported, and no report carries the canary
key that the failing request, frame, log line or exception held.

Events are captured by a test transport (everything the SDK would send, as envelopes) and
searched as the end-to-end canary test searches (tests/security/canary_support.py: plaintext,
hex and base64). The Django failures go through the production ASGI application (`niyra.asgi`),
so the SDK sees the request as it would in production: headers, query string, cookies and body.
Each test leaves the SDK off again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.transport import Transport

from core.logging import LogContext, log_context_set
from core.sentry import sentry_init, sentry_loop_instrument
from niyra.celery import app as celery_app
from tests.byok.test_never_leaked import canary_key
from tests.security.canary_support import Haystack

DSN = "https://public@sentry.invalid/1"  # never dialled: the test transport replaces the network
# A logger no handler (so no redaction filter) sees: what reaches Sentry is Sentry's to scrub.
unfiltered = logging.getLogger("tests.core.test_sentry.unfiltered")
UNSCRUBBED_BEARER = re.compile(r"bearer\s+(?!\[redacted\])[A-Za-z0-9._~+/\-]{8,}", re.IGNORECASE)


class CapturingTransport(Transport):
    """Keeps every envelope the SDK would send."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[Any]:
        return [event for envelope in self.envelopes if (event := envelope.get_event()) is not None]

    def haystack(self) -> Haystack:
        haystack = Haystack()
        for number, envelope in enumerate(self.envelopes):
            haystack.add(f"envelope {number} ({envelope.description})", envelope.serialize())
        return haystack


def assert_nothing_of(key: str, transport: CapturingTransport) -> None:
    assert transport.haystack().find(key) == []
    sent = json.dumps(transport.events())
    assert sent.count(key) == 0
    assert not UNSCRUBBED_BEARER.search(sent)
    for event in transport.events():
        for exception in event.get("exception", {}).get("values", []):
            assert all("vars" not in frame for frame in exception.get("stacktrace", {}).get("frames", []))


def only_event(transport: CapturingTransport, mechanism: str) -> dict[str, Any]:
    events = [
        event
        for event in transport.events()
        if any(value["mechanism"]["type"] == mechanism for value in event.get("exception", {}).get("values", []))
    ]
    assert len(events) == 1, [event.get("exception") for event in transport.events()]
    return events[0]


@pytest.fixture
def canary() -> str:
    return canary_key("anthropic", "canary" + secrets.token_hex(12))


@pytest.fixture
def transport() -> CapturingTransport:
    return CapturingTransport()


@pytest.fixture
def reporting(transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch) -> Iterator[CapturingTransport]:
    """Sentry on, as the settings start it with a DSN, for this test only."""
    monkeypatch.setattr(unfiltered, "propagate", False)
    with sentry_sdk.isolation_scope():
        assert sentry_init(dsn=DSN, environment="test", transport=transport)
        try:
            yield transport
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.get_global_scope().set_client(None)
    assert not sentry_sdk.get_client().is_active()


# --- A view and an API that fail with a key in hand ---------------------------------------------


@csrf_exempt
def provider_call_fails(request: HttpRequest) -> HttpResponse:
    provider_key = json.loads(request.body)["key"]
    unfiltered.info("calling the provider with %s", provider_key)
    raise RuntimeError(f"the provider refused {provider_key}")


class ProviderCallFailsApi(APIView):
    authentication_classes = ()
    permission_classes = ()

    def post(self, request: Request) -> Response:
        provider_key = dict(request.data)["key"]
        unfiltered.info("calling the provider with %s", provider_key)
        raise RuntimeError(f"the provider refused {provider_key}")


urlpatterns = [
    path("sentry/provider-call", provider_call_fails),
    path("api/sentry/provider-call", ProviderCallFailsApi.as_view()),
]
handler500 = "core.errors.handler500"


def asgi_post(path: str, *, query: str, headers: dict[str, str], body: bytes) -> int:
    """One request through the production ASGI application; its status."""
    from niyra.asgi import application

    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(name.encode(), value.encode()) for name, value in {"host": "testserver", **headers}.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(application(scope, receive, send))
    return status


def post_with_the_key_everywhere(path: str, key: str, request_id: str) -> int:
    body = json.dumps({"key": key, "note": f"my key is {key}"}).encode()
    return asgi_post(
        path,
        query=f"code={key}&next=/settings?k={key}",
        headers={
            "content-type": "application/json",
            "content-length": str(len(body)),
            "user-agent": "niyra-tests/1.0",
            "x-request-id": request_id,
            "authorization": f"Bearer {key}",
            "x-api-key": key,
            "cookie": f"niyra_pref={key}; csrftoken=abc",
        },
        body=body,
    )


# --- Tests --------------------------------------------------------------------------------------


def test_without_a_dsn_nothing_is_set_up_or_sent(transport: CapturingTransport, settings: Any, canary: str) -> None:
    settings.ROOT_URLCONF = __name__
    assert not sentry_sdk.get_client().is_active()  # the settings did not start it either

    assert sentry_init(dsn="", environment="test", transport=transport) is False

    assert post_with_the_key_everywhere("/sentry/provider-call", canary, "test-request-0000") == 500
    sentry_sdk.capture_exception(RuntimeError("reported"))
    logging.getLogger("tests.core.test_sentry").error("an error line")
    assert not sentry_sdk.get_client().is_active()
    assert sentry_sdk.get_client().get_integration(DjangoIntegration) is None
    assert transport.envelopes == []


@pytest.mark.parametrize(
    ("path", "mechanism"),
    [
        ("/sentry/provider-call", "django"),  # Django gives up: its got_request_exception
        ("/api/sentry/provider-call", "logging"),  # the API's exception handler logs it at ERROR
    ],
)
def test_a_failing_request_is_reported_without_the_key(
    reporting: CapturingTransport, settings: Any, canary: str, path: str, mechanism: str
) -> None:
    """The key is in the body, the Authorization and x-api-key headers, the query string, a
    cookie, a local variable of the failing frame, a log line before the error (a breadcrumb)
    and the exception's message."""
    settings.ROOT_URLCONF = __name__
    request_id = "test-request-" + secrets.token_hex(8)

    assert post_with_the_key_everywhere(path, canary, request_id) == 500

    event = only_event(reporting, mechanism)
    assert "the provider refused [redacted]" in [value["value"] for value in event["exception"]["values"]]
    assert event["tags"]["request_id"] == request_id
    request = event["request"]
    assert request["method"] == "POST"
    assert request["url"].endswith(path)
    assert {name.lower() for name in request["headers"]} <= {"content-type", "user-agent", "x-request-id"}
    assert "niyra-tests/1.0" in request["headers"].values()
    assert not {"data", "cookies", "query_string", "env"} & set(request)
    messages = [crumb.get("message") for crumb in event["breadcrumbs"]["values"]]
    assert "calling the provider with [redacted]" in messages
    assert "user" not in event
    assert_nothing_of(canary, reporting)


@celery_app.task(name="tests.core.test_sentry.provider_probe")
def provider_probe(*, note: str) -> None:
    raise RuntimeError(f"the provider said: invalid x-api-key: {note}")


def test_a_failing_task_is_reported_without_the_key(reporting: CapturingTransport, canary: str) -> None:
    result = provider_probe.apply(kwargs={"note": canary})

    assert result.failed()
    event = only_event(reporting, "celery")
    assert event["exception"]["values"][0]["value"] == "the provider said: invalid x-api-key: [redacted]"
    assert event["extra"]["celery-job"] == {"task_name": "tests.core.test_sentry.provider_probe"}  # no arguments
    assert_nothing_of(canary, reporting)


def test_a_failing_asyncio_task_is_reported_without_the_key(reporting: CapturingTransport, canary: str) -> None:
    async def relay() -> None:
        raise RuntimeError(f"upstream closed the stream of key {canary}")

    async def serve() -> None:
        sentry_loop_instrument()  # as the server's lifespan does, inside its loop
        with log_context_set(LogContext(request_id="test-request-async", call_id="call-42")):
            task = asyncio.create_task(relay())
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(serve())

    event = only_event(reporting, "asyncio")
    assert event["exception"]["values"][0]["value"] == "upstream closed the stream of key [redacted]"
    assert event["tags"]["request_id"] == "test-request-async"
    assert event["tags"]["call_id"] == "call-42"
    assert_nothing_of(canary, reporting)
