"""Project middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware import clickjacking, common, csrf, security
from django.utils.deprecation import MiddlewareMixin


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


def _alive() -> HttpResponse:
    response = JsonResponse({"status": "ok"})
    response["Cache-Control"] = "no-store"
    return response


# --- Middleware without a thread hop per hook under ASGI -----------------------------------------
#
# `MiddlewareMixin.__acall__` runs every `process_request`/`process_response` in `sync_to_async`,
# and the handler does the same for `process_view`: 13 thread hops per request with Django's
# classes in settings.MIDDLEWARE. These subclasses run the hooks inline on the event loop (they
# do no I/O, except saving a modified session, and messages that may write to the session: those
# still go to a thread). `niyra.handlers` swaps them in for Django's classes under ASGI.


class InlineHooksMixin(MiddlewareMixin):
    """For a MiddlewareMixin whose hooks are pure computation on the request and response."""

    def response_needs_thread(self, request: HttpRequest) -> bool:
        """True when `process_response` would do I/O for this request (a subclass decides)."""
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)  # type: ignore[misc]
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request):
                return await sync_to_async(self.process_response, thread_sensitive=True)(request, response)
            return self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    pass


class SessionMiddleware(InlineHooksMixin, sessions.SessionMiddleware):
    def response_needs_thread(self, request: HttpRequest) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooksMixin, csrf.CsrfViewMiddleware):
    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)
        if self.async_mode:
            # The handler adapts `process_view` once, at start-up: an async one is awaited
            # directly instead of being sent to a thread.
            self.process_view = self._process_view_inline  # type: ignore[method-assign,assignment]

    async def _process_view_inline(
        self, request: HttpRequest, callback: Callable[..., Any], callback_args: Any, callback_kwargs: Any
    ) -> HttpResponse | None:
        return super().process_view(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(InlineHooksMixin, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(InlineHooksMixin, messages.MessageMiddleware):
    def response_needs_thread(self, request: HttpRequest) -> bool:
        storage = getattr(request, "_messages", None)
        # Unused storage writes nothing; used storage may fall back to the session.
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    pass


class ContentSecurityPolicyMiddleware(InlineHooksMixin, CSPMiddleware):
    """django-csp's middleware (policy: CONTENT_SECURITY_POLICY in settings), with two changes.

    * Under ASGI its hooks run on the event loop (`InlineHooksMixin`): they only build a header.
    * `form-action` also allows the OAuth providers' authorize URLs: "Connect" posts a form that
      the server redirects there, and browsers hold that redirect to `form-action` too.
    """

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
