"""Project middleware."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from core.dbpool import database_unreachable, pools_check
from core.errors import database_unavailable_response

logger = logging.getLogger(__name__)


class AsyncCapableMiddleware:
    """A middleware that runs in the handler's own mode, sync or async, with no adapter hop."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        raise NotImplementedError


class HealthCheckMiddleware(AsyncCapableMiddleware):
    """Answers `/healthz` before host validation and the HTTPS redirect.

    Fly's health checks reach the machine by its private address over plain HTTP, which
    ALLOWED_HOSTS and SECURE_SSL_REDIRECT would otherwise turn into a 400 or a 301.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        if request.path == "/healthz" and request.method == "GET":
            return _alive()
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz" and request.method == "GET":
            return _alive()
        return await self.get_response(request)  # type: ignore[misc]


class DatabaseUnavailableMiddleware(AsyncCapableMiddleware):
    """A view that can't reach PostgreSQL (stopped, restarting, failing over, or no connection
    within the pool's timeout) answers 503 with Retry-After — the catalogue's JSON error on the
    API, a plain page on the dashboard — instead of a 500, and the pool's idle connections are
    checked (they rarely die alone). A query's own failure is not this: it stays a 500.

    DRF views answer through the API's exception handler, which does the same."""

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not database_unreachable(exception):
            return None
        logger.warning("database unreachable (%s) for %s", exception.__class__.__name__, request.path)
        pools_check()
        return database_unavailable_response(request)


def _alive() -> HttpResponse:
    response = JsonResponse({"status": "ok"})
    response["Cache-Control"] = "no-store"
    return response


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware (policy: CONTENT_SECURITY_POLICY in settings), where `form-action`
    also allows the OAuth providers' authorize URLs: "Connect" posts a form that the server
    redirects there, and browsers hold that redirect to `form-action` too."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        origins = sorted({_origin(str(entry["authorize_url"])) for entry in settings.OAUTH_INTEGRATIONS.values()})
        if origins:
            update = dict(parts.update or {})
            update["form-action"] = [*update.get("form-action", []), *origins]
            parts.update = update
        return parts


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
