"""Project middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse


class HealthCheckMiddleware:
    """Answers `/healthz` before host validation and the HTTPS redirect.

    Fly's health checks reach the machine by its private address over plain HTTP, which
    ALLOWED_HOSTS and SECURE_SSL_REDIRECT would otherwise turn into a 400 or a 301.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

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


def _alive() -> HttpResponse:
    response = JsonResponse({"status": "ok"})
    response["Cache-Control"] = "no-store"
    return response
