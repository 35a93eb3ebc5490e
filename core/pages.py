"""Plumbing shared by the dashboard's views (which live in their apps): sign-in for pages and
htmx actions, partial-or-page rendering, and the product page's troubleshooting words.

Wiring only: no domain logic here. Every write goes through the apps' services.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url
from django.template.response import TemplateResponse
from django.utils.http import url_has_allowed_host_and_scheme

from core.errors import NiyraError, message_parts

View = TypeVar("View", bound=Callable[..., Any])

SESSION_ENDED = "Your session has ended. Sign in again to continue; nothing was changed."

# The product page's "Troubleshooting" section, word for word (quota: "Same — top up your
# provider account.", where "Same" points at the rate-limit advice; shown alone, it says what to do).
KEY_INVALID_HELP = "Paste it without quotes. Anthropic keys start with sk-ant-, OpenAI keys with sk-proj- or sk-."
_TROUBLESHOOTING: dict[str, tuple[str, str]] = {
    "key_invalid": ("Key invalid", KEY_INVALID_HELP),
    "key_rejected": ("Key invalid", KEY_INVALID_HELP),
    "key_wrong_provider": ("Key invalid", KEY_INVALID_HELP),
    "rate_limited": ("Rate limited", "Your vendor limit was hit. Wait or upgrade your tier with the provider."),
    "quota_exhausted": ("Quota exhausted", "Top up your provider account."),
    "apex_not_enabled": ("Apex doesn't appear", "Apex is alpha-gated. Email hi@niyra.ai for access."),
}


@dataclass(frozen=True, slots=True)
class ShownError:
    """An error as the dashboard shows it: the catalogue's message, and the product page's
    troubleshooting entry for it when the message does not already say it."""

    code: str
    message: str
    help_title: str = ""
    help_text: str = ""
    note: str = ""  # what happened to the user's data, e.g. "your saved key stays"

    @property
    def headline(self) -> str:
        """The product page's "Title — text" messages show the title in bold."""
        return message_parts(self.message)[0]

    @property
    def detail(self) -> str:
        return message_parts(self.message)[1]


def shown_error(exc: NiyraError | None = None, *, code: str = "", message: str = "", note: str = "") -> ShownError:
    code = exc.code if exc is not None else code
    message = exc.message if exc is not None else message
    title, text = _TROUBLESHOOTING.get(code, ("", ""))
    if text and text.lower() in message.lower():
        title, text = "", ""
    return ShownError(code=code, message=message, help_title=title, help_text=text, note=note)


def is_htmx(request: HttpRequest) -> bool:
    return bool(getattr(request, "htmx", False))


def render_part(
    request: HttpRequest,
    *,
    page: str,
    part: str,
    context: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> TemplateResponse:
    """htmx asks for the changed part of a page; a plain form post (no JavaScript) gets the page.

    Always 200: a form with a problem is still a page that answered (htmx swaps only 2xx).
    """
    response = TemplateResponse(request, part if is_htmx(request) else page, context)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _return_to(request: HttpRequest, fallback: str) -> str:
    """Where to land after signing in again: the page the action was on, never the action URL
    (it only answers POST) and never another site."""
    candidate = request.headers.get("HX-Current-URL", "") or request.headers.get("Referer", "")
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()}):
        parts = urlsplit(candidate)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return resolve_url(fallback)


def _signed_out(request: HttpRequest, return_to: str | None) -> HttpResponse:
    if request.method == "GET" and not is_htmx(request):
        return redirect_to_login(request.get_full_path())
    # An action (a form post or an htmx request) from a page whose session has since ended.
    messages.info(request, SESSION_ENDED)
    target = _return_to(request, return_to or "dashboard:home")
    login = redirect_to_login(target)
    if is_htmx(request):
        response = HttpResponse(status=200)
        response["HX-Redirect"] = login["Location"]  # a full-page visit, not a swap of the login form
        return response
    return login


def dashboard_login_required(view: View | None = None, *, return_to: str | None = None) -> Any:
    """`login_required` for dashboard pages and their htmx actions (sync or async views).

    Signed out in the middle of an action (expired session, another tab logged out): a plain post
    is sent to the sign-in page and back to the page it came from; an htmx request gets
    `HX-Redirect` instead of a login form swapped into a card. Nothing submitted is kept: a
    pasted key is simply dropped.
    """

    def decorate(func: View) -> View:
        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                user = await request.auser()
                if not user.is_authenticated:
                    return _signed_out(request, return_to)
                return cast(HttpResponse, await func(request, *args, **kwargs))

            return cast(View, async_wrapper)

        @functools.wraps(func)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return _signed_out(request, return_to)
            return cast(HttpResponse, func(request, *args, **kwargs))

        return cast(View, wrapper)

    if view is not None:
        return decorate(view)
    return decorate
