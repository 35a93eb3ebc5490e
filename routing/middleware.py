"""`RoutingMiddleware`: gives every request `request.llm`, the LLM dispatcher for its user.

Async-capable (the routing endpoints are async views) and lazy: it touches nothing — no
database, no key — until a view makes a call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from accounts.models import User
from niyra.auth import aauthenticate_bearer, bearer_token
from niyra.errors import AUTHENTICATION_FAILED, NiyraError
from routing.dispatcher import LLMDispatcher


async def request_user(request: HttpRequest) -> User | None:
    """The caller: a Bearer API token if one is sent (a bad one is an error), else the session."""
    if bearer_token(request) is not None:
        user = await aauthenticate_bearer(request)
        if user is None:
            raise NiyraError(AUTHENTICATION_FAILED)
        return user
    session_user = await request.auser()
    return session_user if isinstance(session_user, User) and session_user.is_active else None


class RoutingMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        request.llm = LLMDispatcher(lambda: request_user(request))  # type: ignore[attr-defined]
        return self.get_response(request)
