"""The OAuth callback: the provider sends the browser back here with `code` and `state`.

A plain view (a browser redirect, not an API call): it finishes the connect flow through the
service and lands on the Connections page with a message. It never echoes the code, the state or the
provider's free text.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts.auth import request_user
from byok import oauth
from byok.services import connection_connect_complete
from core.errors import NiyraError


@never_cache
@require_GET
@login_required
def oauth_callback(request: HttpRequest, integration: str) -> HttpResponse:
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
