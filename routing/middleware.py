"""`RoutingMiddleware`: gives every request `request.llm`, the LLM dispatcher for its user.

Async-capable (the routing endpoints are async views) and lazy: it touches nothing — no
database, no key — until a view makes a call.
"""

from __future__ import annotations

from collections.abc import Awaitable

from django.http import HttpRequest, HttpResponse

from accounts.auth import bearer_api_token, bearer_token
from accounts.models import User
from core.db import db_sync_to_async
from core.middleware import AsyncCapableMiddleware
from routing.dispatcher import Caller, LLMDispatcher
from routing.selectors import routing_snapshot


def _token_caller(request: HttpRequest) -> Caller | None:
    """The API token's user and their routing snapshot, read in one database hop."""
    token = bearer_api_token(request)
    if token is None:
        return None
    return Caller(user=token.user, snapshot=routing_snapshot(user_id=token.user_id))


async def request_caller(request: HttpRequest) -> Caller | User | None:
    """The caller: a Bearer API token if one is sent (a bad one is an error), else the session."""
    if bearer_token(request) is not None:
        return await db_sync_to_async(_token_caller)(request)
    session_user = await request.auser()
    return session_user if isinstance(session_user, User) and session_user.is_active else None


class RoutingMiddleware(AsyncCapableMiddleware):
    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        request.llm = LLMDispatcher(lambda: request_caller(request))  # type: ignore[attr-defined]
        return self.get_response(request)
