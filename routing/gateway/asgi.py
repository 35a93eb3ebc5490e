"""The gateway's ASGI app, in front of Django's.

Requests under `/v1/`, `/anthropic/` and `/openai/` are LLM calls from SDKs with bearer tokens:
they need no session, CSRF, messages or template machinery, so they don't go through Django's
request path at all — this app reads them and hands them to `surfaces`. Everything else goes to
Django's own ASGI handler, unchanged. The ASGI lifespan closes the pooled upstream session and
database pool of this process on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from django.conf import settings

from core import errors, metrics
from core.dbpool import database_unreachable, pools_observe
from core.errors import NiyraError
from core.request_observer import RequestObserver
from core.sentry import sentry_loop_instrument
from routing.gateway import db, upstream
from routing.gateway.core import Exchange, Receive, Send, authenticate, routes_closed
from routing.gateway.surfaces import endpoint_for, shape_for

logger = logging.getLogger("routing.gateway")

PREFIXES = ("/v1/", "/anthropic/", "/openai/")
POOL_SAMPLE_SECONDS = 5.0
MAX_BODY_BYTES = 32 * 1024 * 1024  # the providers' own limit for a request (audio uploads, images)


def is_gateway_path(path: str) -> bool:
    return path.startswith(PREFIXES)


async def _read_body(scope: dict[str, Any], receive: Receive) -> bytes | None:
    """The whole request body, or None if it is larger than any provider accepts."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def handle(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    shape = shape_for(path)
    exchange = Exchange(method=scope["method"], path=path, headers=headers, body=b"", send=send, receive=receive)
    try:
        endpoint = endpoint_for(path)
        if endpoint is None:
            raise NiyraError(errors.NOT_FOUND, message=f"No such endpoint: {scope['method']} {path[:200]}")
        shape = endpoint.shape
        if scope["method"] not in endpoint.methods:
            allow = ", ".join(endpoint.methods)
            raise NiyraError(errors.METHOD_NOT_ALLOWED, headers={"Allow": allow}, detail={"allow": allow})
        body = await _read_body(scope, receive)
        if body is None:
            raise NiyraError(errors.REQUEST_TOO_LARGE, detail={"max_bytes": MAX_BODY_BYTES})
        exchange.body = body
        caller = await authenticate(exchange)
        await endpoint.handler(exchange, caller)
    except NiyraError as exc:
        if not exchange.started:
            await exchange.error(exc, shape)
    except Exception as exc:
        logger.exception("gateway request failed: %s %s", scope["method"], path[:200])
        if not exchange.started:
            # The rare paths that hop to a service (Django's pool) meet an outage this way.
            failure = (
                errors.database_unavailable_error() if database_unreachable(exc) else NiyraError(errors.INTERNAL_ERROR)
            )
            await exchange.error(failure, shape)
        else:
            await send({"type": "http.response.body", "body": b""})


async def _pools_sample() -> None:
    """Record this process's database pools (Django's and the gateway's) every few seconds."""
    while True:
        if metrics.enabled():
            pools_observe()
            stats = db.pool_stats()
            if stats is not None:
                metrics.db_pool_observe("gateway", stats)
        await asyncio.sleep(POOL_SAMPLE_SECONDS)


async def lifespan(receive: Receive, send: Send) -> None:
    sampler: asyncio.Task[None] | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if settings.METRICS_LISTEN and not metrics.multiprocess_mode():
                # A single-process server serves its own figures (gunicorn's master serves its
                # workers': gunicorn.conf.py).
                metrics.exporter_start(settings.METRICS_LISTEN)
            sentry_loop_instrument()  # its asyncio integration hooks the running loop only
            sampler = asyncio.create_task(_pools_sample())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            # Calls the server cut at the end of its grace are writing their books: let them.
            await routes_closed(timeout=2 * settings.GATEWAY_DB_POOL_TIMEOUT_SECONDS)
            await upstream.session_close()
            await db.pool_close()
            await send({"type": "lifespan.shutdown.complete"})
            return


class GatewayApplication:
    """The process's ASGI application: the gateway's paths here, the rest to `django_app`."""

    def __init__(self, django_app: Any) -> None:
        self.django_app = django_app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and is_gateway_path(scope["path"]):
            await handle(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(receive, send)
        else:
            await self.django_app(scope, receive, send)


# The parts of Niyra by path, for the request metrics and log lines (the first match wins).
AREAS = (
    ("gateway", PREFIXES),
    ("api", ("/api/",)),
    ("admin", ("/admin/",)),
    ("static", ("/static/",)),
    ("health", ("/healthz", "/readyz")),
    ("dashboard", ("/",)),
)


def asgi_application(django_app: Any) -> RequestObserver:
    """The process's ASGI application (niyra.asgi): every request observed (a request id, a log
    line, its metrics), the gateway's paths served here and the rest by `django_app`."""
    return RequestObserver(GatewayApplication(django_app), areas=AREAS)
