"""The ASGI handler: Django's, with Django's own middleware made event-loop friendly.

Under ASGI, `MiddlewareMixin.__acall__` runs every `process_request`/`process_response` hook in
`sync_to_async`, and the handler sends `process_view` to a thread too: with the stack in
`settings.MIDDLEWARE` that was 13 thread hops per request before any view code ran. The
subclasses in `core.middleware` run the hooks inline (they are pure computation) and keep a
thread only for the hooks that may write a session. Settings keep naming Django's classes, so
`check --deploy` and the admin's checks see exactly what they expect; the swap happens only
here, when the ASGI handler builds its middleware chain. WSGI (and Django's test Client) use
Django's classes unchanged. The handler also marks each request as served by the ASGI server,
which moves database hops to a shared thread pool (`core.db`).
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler

from core.db import ON_ASGI_SERVER

INLINE_MIDDLEWARE = {
    "django.middleware.security.SecurityMiddleware": "core.middleware.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware": "core.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware": "core.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware": "core.middleware.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware": "core.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware": "core.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": "core.middleware.XFrameOptionsMiddleware",
}


def inline_middleware() -> dict[str, str]:
    """The swaps that hold for these settings: with CSRF_USE_SESSIONS, CSRF reads and writes the
    session (database I/O), so Django's own class, with its thread hops, stays."""
    if settings.CSRF_USE_SESSIONS:
        return {k: v for k, v in INLINE_MIDDLEWARE.items() if k != "django.middleware.csrf.CsrfViewMiddleware"}
    return INLINE_MIDDLEWARE


class ASGIHandler(DjangoASGIHandler):
    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        ON_ASGI_SERVER.set(True)  # this request's task only (see core.db)
        await super().handle(scope, receive, send)

    def load_middleware(self, is_async: bool = False) -> None:
        configured = settings.MIDDLEWARE
        settings.MIDDLEWARE = [inline_middleware().get(path, path) for path in configured]
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = configured


def get_asgi_application() -> ASGIHandler:
    """`django.core.asgi.get_asgi_application`, with Niyra's handler."""
    django.setup(set_prefix=False)
    return ASGIHandler()
