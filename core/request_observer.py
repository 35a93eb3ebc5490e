"""Every HTTP request, observed once at the edge of the ASGI application (niyra.asgi wraps the
whole app in it): a request id, one log line, and the request metrics.

The request id is the client's `X-Request-Id` when it is well formed (else Fly's proxy's
`Fly-Request-Id`, else a new one). It goes back in the response's `X-Niyra-Request-Id` (not
`X-Request-Id`: the gateway relays the provider's own, which the OpenAI SDK reads), and every line
logged while the request is served carries it (core.logging's LogContext), with the routed
call's id once the gateway has one: support finds a user's failed call from what the user saw.
The line itself says what was asked and answered, never headers, a query string or a body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from core import metrics
from core.logging import LogContext, log_context_set, request_id_checked, request_id_new

logger = logging.getLogger("niyra.requests")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID_HEADER = b"x-niyra-request-id"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_LOGGED_PATH = 200
HEALTH = "health"
LOGGED_IDS = ("request_id", "call_id", "user_id")


class RequestObserver:
    """ASGI middleware. `areas` name the parts of Niyra by path prefix (the first match wins;
    unmatched paths are `other`): the `area` label of the request metrics and log line."""

    def __init__(self, app: App, *, areas: Sequence[tuple[str, Sequence[str]]]) -> None:
        self.app = app
        self.areas = [(area, tuple(prefixes)) for area, prefixes in areas]

    def area_for(self, path: str) -> str:
        for area, prefixes in self.areas:
            if path.startswith(prefixes):
                return area
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        context = LogContext(request_id=_request_id(scope["headers"]))
        header = (REQUEST_ID_HEADER, context.request_id.encode())
        status = 500  # what the server answers when the app fails before it starts a response

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        with log_context_set(context):
            try:
                await self.app(scope, receive, send_observed)
            finally:
                self._observed(scope, context, status, time.monotonic() - arrived)

    def _observed(self, scope: Scope, context: LogContext, status: int, seconds: float) -> None:
        path: str = scope["path"]
        area = self.area_for(path)
        method = scope["method"] if scope["method"] in METHODS else "other"
        if metrics.enabled():
            metrics.HTTP_REQUESTS.labels(area, method, str(status)).inc()
            metrics.HTTP_REQUEST_SECONDS.labels(area).observe(seconds)
        level = logging.DEBUG if area == HEALTH and status < 400 else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "%s %s %d",
                method,
                path[:MAX_LOGGED_PATH],
                status,
                extra={
                    "method": method,
                    "path": path[:MAX_LOGGED_PATH],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                    "area": area,
                    **{name: getattr(context, name) for name in LOGGED_IDS if getattr(context, name) is not None},
                },
            )


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    client = fly = None
    for name, value in headers:
        if name == CLIENT_REQUEST_ID_HEADER:
            client = value.decode("latin-1")
        elif name == b"fly-request-id":
            fly = value.decode("latin-1")
    return request_id_checked(client) or request_id_checked(fly) or request_id_new()
