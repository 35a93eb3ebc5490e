"""Dashboard pages of byok: Settings → BYOK (one card per provider).

Thin: every change goes through `byok.services`; errors are the catalogue's words with the
product page's troubleshooting text, shown in the card they belong to. A pasted key is read
from the POST, handed to the service and dropped: it is never rendered back (the field is
always empty), logged, kept in the session or put in a message, and Django's error reports
show it as stars (`sensitive_post_parameters`, `sensitive_variables`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.auth import request_user
from accounts.models import User
from byok.keytext import ANTHROPIC_PREFIX, MAX_KEY_LENGTH, OPENAI_PREFIXES
from byok.models import KeyCheck, KeyStatus, Provider, ProviderKey
from byok.selectors import key_checks_recent, provider_key_effective_status, provider_key_get
from byok.services import provider_key_disconnect, provider_key_save, provider_key_test
from core import errors
from core.errors import NiyraError
from core.pages import ShownError, dashboard_login_required, is_htmx, render_part, shown_error
from credits.models import BillingAccount
from credits.selectors import billing_account_for

# Longer than any key could be, even wrapped in quotes and whitespace; the field's maxlength.
MAX_PASTE_LENGTH = MAX_KEY_LENGTH * 2
PROVIDER_PREFIXES = {Provider.ANTHROPIC: (ANTHROPIC_PREFIX,), Provider.OPENAI: OPENAI_PREFIXES}
_ERROR_STATUSES = {KeyStatus.INVALID, KeyStatus.RATE_LIMITED, KeyStatus.QUOTA_EXHAUSTED, KeyStatus.NEEDS_REENTRY}


@dataclass(frozen=True, slots=True)
class KeyCard:
    provider: str
    label: str
    prefixes: tuple[str, ...]
    key: ProviderKey | None
    status: str  # effective status, or "" when no key is connected
    status_label: str
    allows_byok: bool
    last_problem: ShownError | None  # what the provider said last time (from the stored status)
    checks: tuple[KeyCheck, ...] = ()  # the key's recent checks, newest first
    error: ShownError | None = None  # what just went wrong
    notice: str = ""
    confirming: bool = False

    @property
    def field_id(self) -> str:
        return f"key-{self.provider}"


def _provider(provider: str) -> str:
    if provider not in Provider.values:
        raise Http404
    return provider


def _key_card(
    user: User,
    provider: str,
    *,
    account: BillingAccount,
    error: ShownError | None = None,
    notice: str = "",
    confirming: bool = False,
) -> KeyCard:
    key = provider_key_get(user=user, provider=provider)
    status = provider_key_effective_status(key) if key is not None else ""
    last_problem: ShownError | None = None
    if key is not None and not account.allows_byok:
        last_problem = shown_error(NiyraError(errors.PLAN_KEY_UNUSABLE))
    elif key is not None and status == KeyStatus.NEEDS_REENTRY:
        last_problem = shown_error(NiyraError(errors.KEY_NEEDS_REENTRY))
    elif key is not None and status in _ERROR_STATUSES and key.last_error_code in errors.CATALOGUE:
        last_problem = shown_error(NiyraError(errors.CATALOGUE[key.last_error_code]))
    return KeyCard(
        provider=provider,
        label=Provider(provider).label,
        prefixes=PROVIDER_PREFIXES[Provider(provider)],
        key=key,
        status=status,
        status_label=KeyStatus(status).label if status else "Not connected",
        allows_byok=account.allows_byok,
        last_problem=last_problem,
        checks=tuple(key_checks_recent(provider_key=key)) if key is not None else (),
        error=error,
        notice=notice,
        confirming=confirming and key is not None,
    )


def _byok_context(user: User, *, card: KeyCard | None = None) -> dict[str, Any]:
    account = billing_account_for(user=user)
    cards = [
        card if card is not None and card.provider == provider else _key_card(user, provider, account=account)
        for provider in Provider.values
    ]
    return {
        "account": account,
        "cards": cards,
        "plan_no_byok": errors.PLAN_NO_BYOK.message,
        "max_paste_length": MAX_PASTE_LENGTH,
    }


def _card_response(request: HttpRequest, card: KeyCard) -> TemplateResponse:
    """The acting card with what just happened, and every other card as it stands now (htmx
    swaps them together, so no card keeps a message from an earlier action)."""
    context = _byok_context(request_user(request), card=card)
    response = render_part(request, page="dashboard/byok.html", part="dashboard/_key_cards.html", context=context)
    response["Cache-Control"] = "no-store"
    return response


def _throttled_response(response: HttpResponse, exc: NiyraError | None) -> HttpResponse:
    """Past the per-user probe budget (`byok.throttle`, the API's too), as the API says it: 429
    and Retry-After; the card says how long to wait (app.js has htmx swap it in)."""
    if exc is not None and exc.code == errors.THROTTLED.code:
        response.status_code = errors.THROTTLED.status
        for name, value in exc.headers.items():
            response[name] = value
    return response


@require_GET
@dashboard_login_required
def byok_settings(request: HttpRequest) -> HttpResponse:
    response = TemplateResponse(request, "dashboard/byok.html", _byok_context(request_user(request)))
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@sensitive_post_parameters("key")
@sensitive_variables("pasted")
@dashboard_login_required(return_to="dashboard:byok")
def byok_key_save(request: HttpRequest, provider: str) -> HttpResponse:
    """Add or rotate: validated by the provider first; a key that fails leaves the old one."""
    user = request_user(request)
    provider = _provider(provider)
    account = billing_account_for(user=user)
    pasted = request.POST.get("key", "")
    error: ShownError | None = None
    refusal: NiyraError | None = None
    notice = ""
    if len(pasted) > MAX_PASTE_LENGTH:
        error = shown_error(NiyraError(errors.KEY_INVALID))
    else:
        try:
            saved = provider_key_save(user=user, provider=provider, key=pasted)
        except NiyraError as exc:
            refusal = exc
            current = provider_key_get(user=user, provider=provider)
            note = f"Nothing was changed: your saved key {current.hint} stays in use." if current else ""
            error = shown_error(exc, note=note)
        else:
            notice = (
                "Key saved and validated. Niyra routes through it from the next message."
                if saved.status == KeyStatus.VALID
                else "Key saved: the provider recognised it, but see below."
            )
    del pasted
    card = _key_card(user, provider, account=account, error=error, notice=notice)
    if error is None and not is_htmx(request):
        messages.success(request, f"{card.label}: {notice}")
        return redirect("dashboard:byok")
    return _throttled_response(_card_response(request, card), refusal)


@require_POST
@dashboard_login_required(return_to="dashboard:byok")
def byok_key_test(request: HttpRequest, provider: str) -> HttpResponse:
    """The "Test key" button: one round trip with the stored key."""
    user = request_user(request)
    provider = _provider(provider)
    account = billing_account_for(user=user)
    error: ShownError | None = None
    refusal: NiyraError | None = None
    notice = ""
    try:
        provider_key_test(user=user, provider=provider)
    except NiyraError as exc:
        refusal = exc
        error = shown_error(exc)
    else:
        notice = "Key works: the provider answered the test prompt."
    card = _key_card(user, provider, account=account, error=error, notice=notice)
    if error is None and not is_htmx(request):
        messages.success(request, f"{card.label}: {notice}")
        return redirect("dashboard:byok")
    return _throttled_response(_card_response(request, card), refusal)


@require_http_methods(["GET", "POST"])
@dashboard_login_required(return_to="dashboard:byok")
def byok_key_disconnect(request: HttpRequest, provider: str) -> HttpResponse:
    """GET asks for confirmation (in the card, or as a page without JavaScript); POST disconnects."""
    user = request_user(request)
    provider = _provider(provider)
    account = billing_account_for(user=user)
    if request.method == "GET":
        card = _key_card(user, provider, account=account, confirming=True)
        if card.key is None:
            card = _key_card(user, provider, account=account, error=shown_error(NiyraError(errors.KEY_NOT_FOUND)))
        return _card_response(request, card)
    error: ShownError | None = None
    try:
        provider_key_disconnect(user=user, provider=provider)
    except NiyraError as exc:  # already disconnected (another tab, a double click)
        error = shown_error(exc)
    notice = "" if error else "Disconnected. Niyra reverts to the credit pool from the next message."
    card = _key_card(user, provider, account=account, error=error, notice=notice)
    if not is_htmx(request):
        if error is None:
            messages.success(request, f"{card.label}: {notice}")
        else:
            messages.info(request, f"{card.label}: {error.message}")
        return redirect("dashboard:byok")
    return _card_response(request, card)
