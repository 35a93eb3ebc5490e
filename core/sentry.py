"""Error reports to Sentry (sentry-sdk 3), off unless a DSN is set, scrubbed so that no key,
token, password, cookie, query string or request body leaves the process.

Two layers, because either alone has gaps:
* The SDK collects less (`DATA_COLLECTION`): no request bodies, cookies, query strings (OAuth
  codes ride there), user identity, SQL parameters, task arguments or local variables of stack
  frames, and request headers only from `HEADERS_KEPT`.
* Every event, breadcrumb, span and log is then passed through `scrubbed` on its way out: a value
  under a credential's name (`SENSITIVE_NAMES`) is replaced whatever it is, and every other
  string goes through core.logging.redact (key and token shapes, labelled credentials), the
  exception messages, log messages and source lines included. The request keeps only its method,
  URL without the query and the allowed headers.

Each event is tagged with the request id, routed call id and task of core.logging's LogContext,
and carries only the breadcrumbs recorded in that request or task: the log lines of other users'
requests served by the same process stay out of it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import sentry_sdk
from sentry_sdk.integrations.argv import ArgvIntegration
from sentry_sdk.integrations.asyncio import AsyncioIntegration, enable_asyncio_integration
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import LoggingIntegration, ignore_logger_for_events
from sentry_sdk.transport import Transport

from core.logging import REDACTED, log_context, redact

if TYPE_CHECKING:
    from sentry_sdk._types import DataCollectionUserOptions

HEADERS_KEPT = ("content-type", "user-agent", "x-request-id")
TASK_LOGGER = "niyra.tasks"  # core.task_observability's line per task
# A value under a name containing one of these (case-insensitive, "-" read as "_") is replaced.
SENSITIVE_NAMES = (
    "authorization",
    "api_key",
    "apikey",
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
    "private_key",
    "encrypted",
    "cookie",
    "session",
    "csrf",
    "bearer",
)
SENSITIVE_EXACT_NAMES = frozenset({"key"})  # how our forms and serializers name a provider key
# Breadcrumb and span data naming a URL's query or fragment (an outgoing request's).
URL_PARTS_DROPPED = frozenset({"http.query", "http.fragment"})
URL_NAMES = frozenset({"url", "url.full", "http.url"})
CONTEXT_TAGS = ("request_id", "call_id", "task_id", "task_name")

DATA_COLLECTION: DataCollectionUserOptions = {
    "user_info": False,  # no user id, email or IP address
    "cookies": {"mode": "off"},
    "http_headers": {"request": {"mode": "allowlist", "terms": list(HEADERS_KEPT)}},
    "http_bodies": [],
    "url_query_params": {"mode": "off"},
    "database_query_data": False,  # SQL without its parameters
    "queues": False,  # a task's name, not its arguments
    "stack_frame_variables": False,  # a frame's locals hold plaintext keys inside the call
    "gen_ai": {"inputs": False, "outputs": False},
}


def sentry_init(
    *,
    dsn: str,
    environment: str,
    release: str | None = None,
    traces_sample_rate: float = 0.0,
    transport: Transport | None = None,
) -> bool:
    """Start error reporting for this process (once, from the settings); returns whether it did.
    Without a DSN nothing is set up and nothing is sent.

    Integrations are named, not auto-enabled: the SDK would otherwise also instrument the
    provider SDKs (an error event for every key a user got wrong, prompts on spans), Redis and
    outgoing HTTP. A traces sample rate of 0 turns tracing off entirely (a client's
    `sentry-trace` header can't make us send spans), and no outgoing request (to a provider)
    is given trace headers.
    """
    if not dsn:
        return False
    # A failed task's line (core.task_observability) repeats what the Celery integration reports.
    ignore_logger_for_events(TASK_LOGGER)
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        transport=transport,
        integrations=[
            DjangoIntegration(),
            CeleryIntegration(),
            AsyncioIntegration(),
            # Not Sentry Logs (log lines go to stdout); ERROR records become events because the
            # API's exception handler and the gateway answer their unhandled errors and log them.
            LoggingIntegration(level=None, event_level=logging.ERROR, breadcrumb_level=logging.INFO),
        ],
        auto_enabling_integrations=False,
        disabled_integrations=[ArgvIntegration()],  # a command line may carry a credential
        data_collection=DATA_COLLECTION,
        max_request_body_size="never",
        traces_sample_rate=traces_sample_rate or None,
        trace_propagation_targets=[],
        before_send=event_scrubbed,
        before_breadcrumb=breadcrumb_scrubbed,
        before_send_span=telemetry_scrubbed,
        before_send_log=telemetry_scrubbed,
    )
    return True


def sentry_loop_instrument() -> None:
    """Report exceptions that escape asyncio tasks of the running loop (a no-op when reporting is
    off). The asyncio integration instruments the loop running when the SDK starts, and the
    settings are loaded before a uvicorn worker's loop runs: the ASGI lifespan's startup calls
    this, inside the loop."""
    enable_asyncio_integration()


def scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            redact(key) if isinstance(key, str) else key: REDACTED if _sensitive(key) else scrubbed(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrubbed(item) for item in value]
    return value


def _sensitive(name: object) -> bool:
    if not isinstance(name, str):
        return False
    name = name.lower().replace("-", "_")
    return name in SENSITIVE_EXACT_NAMES or any(term in name for term in SENSITIVE_NAMES)


def _without_query(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]
    return urlunsplit(parts._replace(query="", fragment=""))


def _url_data_kept(data: dict[str, Any]) -> dict[str, Any]:
    return {
        name: _without_query(value) if name in URL_NAMES and isinstance(value, str) else value
        for name, value in data.items()
        if name not in URL_PARTS_DROPPED
    }


def _request_kept(request: dict[str, Any]) -> dict[str, Any]:
    """Method, URL without the query, allowed headers: no body, cookies, query string or env."""
    kept: dict[str, Any] = {}
    if "method" in request:
        kept["method"] = request["method"]
    if isinstance(request.get("url"), str):
        kept["url"] = _without_query(request["url"])
    headers = request.get("headers")
    if isinstance(headers, dict):
        kept["headers"] = {name: value for name, value in headers.items() if name.lower() in HEADERS_KEPT}
    return kept


def event_scrubbed(event: Any, hint: Any) -> Any:
    """`before_send`: the event as it may leave, tagged with its request or task."""
    context = log_context()
    request_id = context.request_id if context is not None else None
    if isinstance(event.get("request"), dict):
        event["request"] = _request_kept(event["request"])
    breadcrumbs = event.get("breadcrumbs")
    if isinstance(breadcrumbs, dict) and isinstance(breadcrumbs.get("values"), list):
        # Recorded in this request or task, or outside any (the process's own lines).
        breadcrumbs["values"] = [
            crumb
            for crumb in breadcrumbs["values"]
            if (crumb.get("data") or {}).get("request_id") in (None, request_id)
        ]
    if context is not None:
        tags = event.setdefault("tags", {})
        for name in CONTEXT_TAGS:
            value = getattr(context, name)
            if value is not None:
                tags[name] = str(value)
    return scrubbed(event)


def breadcrumb_scrubbed(crumb: Any, hint: Any) -> Any:
    """`before_breadcrumb`: scrubbed, and marked with the request or task it was recorded in."""
    data = crumb.get("data")
    data = _url_data_kept(data) if isinstance(data, dict) else {}
    context = log_context()
    if context is not None:
        data.setdefault("request_id", context.request_id)
    crumb["data"] = data
    return scrubbed(crumb)


def telemetry_scrubbed(item: Any, hint: Any) -> Any:
    """`before_send_span` / `before_send_log`: spans only exist with a traces sample rate, and
    Sentry Logs are off; should either be turned on, their strings are scrubbed too."""
    if isinstance(item.get("attributes"), dict):
        item["attributes"] = _url_data_kept(item["attributes"])
    return scrubbed(item)
