"""Dashboard page for API tokens: create (the token is shown once), list by prefix, revoke.

The plaintext token exists in the one response that shows it (marked no-store) and nowhere
else: not in the session, a message or a log line.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.auth import request_user
from accounts.models import ApiToken, User
from accounts.selectors import api_token_list
from accounts.services import api_token_create, api_token_revoke
from core.errors import NiyraError
from core.pages import ShownError, dashboard_login_required, is_htmx, render_part, shown_error

# Submission ids of recently created tokens (not the tokens): a double-submitted form creates one.
_SESSION_SUBMISSIONS = "api_token_submissions"
_REMEMBERED_SUBMISSIONS = 20
MAX_NAME_LENGTH = 100


def _context(
    user: User,
    *,
    issued: str = "",
    issued_token: ApiToken | None = None,
    error: ShownError | None = None,
    name: str = "",
    confirming: int | None = None,
    notice: str = "",
) -> dict[str, Any]:
    return {
        "tokens": list(api_token_list(user=user)),
        "issued": issued,
        "issued_token": issued_token,
        "error": error,
        "name": name,
        "submission": uuid.uuid4().hex,
        "confirming": confirming,
        "notice": notice,
        "max_name_length": MAX_NAME_LENGTH,
    }


def _respond(request: HttpRequest, context: dict[str, Any]) -> TemplateResponse:
    response = render_part(request, page="dashboard/tokens.html", part="dashboard/_tokens.html", context=context)
    response["Cache-Control"] = "no-store"
    return response


def _not_found(request: HttpRequest, user: User) -> TemplateResponse:
    """Someone else's token id answers exactly as an id that never existed: a 404."""
    response = _respond(request, _context(user, error=shown_error(code="not_found", message="No such token.")))
    response.status_code = 404
    return response


@never_cache
@require_GET
@dashboard_login_required
def tokens(request: HttpRequest) -> HttpResponse:
    return TemplateResponse(request, "dashboard/tokens.html", _context(request_user(request)))


@never_cache
@require_POST
@sensitive_variables("issued")
@dashboard_login_required(return_to="dashboard:tokens")
def token_create(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    name = request.POST.get("name", "").strip()
    submission = request.POST.get("submission", "")[:64]
    seen: list[str] = request.session.get(_SESSION_SUBMISSIONS, [])
    if submission and submission in seen:
        notice = "That form was already sent: the token was created once (see the list). Its value is not shown again."
        return _respond(request, _context(user, notice=notice))
    if not name or len(name) > MAX_NAME_LENGTH:
        error = shown_error(code="invalid_input", message="Give the token a name (1 to 100 characters).")
        return _respond(request, _context(user, error=error, name=name[:MAX_NAME_LENGTH]))
    try:
        created = api_token_create(user=user, name=name)
    except NiyraError as exc:
        return _respond(request, _context(user, error=shown_error(exc), name=name))
    if submission:
        request.session[_SESSION_SUBMISSIONS] = [*seen, submission][-_REMEMBERED_SUBMISSIONS:]
    issued = created.plaintext
    return _respond(request, _context(user, issued=issued, issued_token=created.token))


@require_http_methods(["GET", "POST"])
@dashboard_login_required(return_to="dashboard:tokens")
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    """GET asks for confirmation; POST revokes (a second POST, or another tab's, is harmless)."""
    user = request_user(request)
    if request.method == "GET":
        if not api_token_list(user=user).filter(pk=token_id).exists():
            return _not_found(request, user)
        return _respond(request, _context(user, confirming=token_id))
    try:
        token = api_token_revoke(user=user, token_id=token_id)
    except NiyraError:
        return _not_found(request, user)
    notice = f"Revoked {token.name} (niy_{token.prefix}_…). Requests with it are refused from now on."
    if not is_htmx(request):
        messages.success(request, notice)
        return redirect("dashboard:tokens")
    return _respond(request, _context(user, notice=notice))
