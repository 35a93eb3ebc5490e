"""Dashboard pages of connections (Connections: Connect / Reconnect / Disconnect) and the OAuth
callback, where the provider sends the browser back with `code` and `state`.

Thin: every change goes through `connections.services`; errors are the catalogue's words. The
callback never echoes the code, the state or the provider's free text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.auth import request_user
from accounts.models import User
from connections import oauth
from connections.models import ConnectionStatus, OAuthConnection
from connections.selectors import ConnectionHealth, connection_get, connection_health, connection_list
from connections.services import connection_connect_complete, connection_connect_start, connection_disconnect
from core import errors
from core.errors import NiyraError
from core.pages import ShownError, dashboard_login_required, is_htmx, render_part, shown_error


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    name: str
    label: str
    configured: bool
    connection: OAuthConnection | None
    status_label: str
    problem: str
    health: ConnectionHealth | None = None
    error: ShownError | None = None
    notice: str = ""
    confirming: bool = False

    @property
    def needs_reconnect(self) -> bool:
        return self.connection is not None and self.connection.status != ConnectionStatus.ACTIVE


def _connection_row(
    user: User, name: str, *, error: ShownError | None = None, notice: str = "", confirming: bool = False
) -> ConnectionRow:
    integration = oauth.find_integration(name)
    connection = connection_get(user=user, integration=name)
    if integration is None and connection is None:
        raise Http404
    problem = ""
    if connection is not None and connection.status != ConnectionStatus.ACTIVE:
        spec = errors.CATALOGUE.get(connection.last_error_code) or (
            errors.OAUTH_NEEDS_REAUTH
            if connection.status == ConnectionStatus.NEEDS_REAUTH
            else errors.OAUTH_CONNECTION_ERROR
        )
        problem = spec.message
    return ConnectionRow(
        name=name,
        label=integration.label if integration else name,
        configured=integration is not None,
        connection=connection,
        status_label=ConnectionStatus(connection.status).label if connection else "Not connected",
        problem=problem,
        health=connection_health(connection) if connection is not None else None,
        error=error,
        notice=notice,
        confirming=confirming and connection is not None,
    )


def _connections_context(user: User, *, row: ConnectionRow | None = None) -> dict[str, Any]:
    names = list(oauth.integrations())
    names += [c.integration for c in connection_list(user=user) if c.integration not in names]
    rows = [row if row is not None and row.name == name else _connection_row(user, name) for name in names]
    return {"rows": rows}


def _row_response(request: HttpRequest, row: ConnectionRow) -> TemplateResponse:
    context = _connections_context(request_user(request), row=row)
    context["row"] = row
    return render_part(
        request, page="dashboard/connections.html", part="dashboard/_connection_row.html", context=context
    )


@require_GET
@dashboard_login_required
def connections(request: HttpRequest) -> HttpResponse:
    return TemplateResponse(request, "dashboard/connections.html", _connections_context(request_user(request)))


@never_cache
@require_POST
@dashboard_login_required(return_to="dashboard:connections")
def connection_connect(request: HttpRequest, integration: str) -> HttpResponse:
    """Connect or Reconnect: off to the provider's consent screen; it sends the browser back to
    the OAuth callback (`oauth_callback` below), which finishes the flow."""
    user = request_user(request)
    redirect_uri = request.build_absolute_uri(reverse("oauth-callback", kwargs={"integration": integration}))
    try:
        url = connection_connect_start(user=user, integration=integration, redirect_uri=redirect_uri)
    except NiyraError as exc:
        if is_htmx(request):
            return _row_response(request, _connection_row(user, integration, error=shown_error(exc)))
        messages.error(request, exc.message)
        return redirect("dashboard:connections")
    if is_htmx(request):
        response = HttpResponse(status=200)
        response["HX-Redirect"] = url
        return response
    return HttpResponseRedirect(url)


@require_http_methods(["GET", "POST"])
@dashboard_login_required(return_to="dashboard:connections")
def connection_disconnect_view(request: HttpRequest, integration: str) -> HttpResponse:
    """GET asks for confirmation; POST deletes the tokens and revokes the grant at the provider."""
    user = request_user(request)
    if request.method == "GET":
        row = _connection_row(user, integration, confirming=True)
        if row.connection is None:
            row = _connection_row(user, integration, error=shown_error(NiyraError(errors.OAUTH_CONNECTION_NOT_FOUND)))
        return _row_response(request, row)
    error: ShownError | None = None
    try:
        connection_disconnect(user=user, integration=integration)
    except NiyraError as exc:
        error = shown_error(exc)
    row = _connection_row(user, integration, error=error, notice="" if error else "Disconnected.")
    if not is_htmx(request):
        if error is None:
            messages.success(request, f"{row.label}: disconnected.")
        else:
            messages.info(request, f"{row.label}: {error.message}")
        return redirect("dashboard:connections")
    return _row_response(request, row)


@never_cache
@require_GET
@login_required
def oauth_callback(request: HttpRequest, integration: str) -> HttpResponse:
    """The provider's redirect back: finish the connect flow and land on Connections with a message."""
    try:
        connection = connection_connect_complete(
            user=request_user(request),
            integration=integration,
            state=request.GET.get("state"),
            code=request.GET.get("code"),
            error=request.GET.get("error"),
        )
    except NiyraError as exc:
        messages.error(request, exc.message)
    else:
        label = oauth.get_integration(connection.integration).label
        messages.success(request, f"{label} is connected.")
    return redirect("dashboard:connections")
