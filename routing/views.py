"""Dashboard "Try a message": send a prompt to a chosen model through the gateway (the same
call as `/v1/chat/completions`, made in process: `routing.gateway.local`) and see the answer,
which key served it and what it cost. And the fallback panel of Settings → BYOK.

An async view: the provider call is awaited with no thread or database connection held. ORM
reads and template rendering (which touches `request.user`) run in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts.auth import arequest_user, request_user
from accounts.models import User
from byok.models import KeyStatus
from byok.selectors import provider_key_get
from core import errors
from core.errors import CATALOGUE, NiyraError
from core.pages import ShownError, dashboard_login_required, is_htmx, shown_error
from credits.models import KeySource
from credits.selectors import billing_account_for, credit_balance
from providers import Provider
from routing.apis import answer_error
from routing.catalog import CatalogModel, Kind, resolve
from routing.credentials import ModelAvailability
from routing.gateway import local
from routing.models import RoutingPreference
from routing.selectors import fallback_spend_today, model_availability_list
from routing.services import routing_preference_set

MAX_PROMPT_CHARACTERS = 20_000
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096
PREFERRED_DEFAULT_MODEL = "claude-haiku-4-5"


# Keys in these states still route (the call may succeed, or fall back to credits when the user
# opted in), so their models stay offered, with the status said, and are never the default.
STRAINED_KEY_STATUSES = frozenset({KeyStatus.QUOTA_EXHAUSTED, KeyStatus.RATE_LIMITED})


@dataclass(frozen=True, slots=True)
class ModelOption:
    """A chat model as the Try page offers it: who would pay, in words, and whether it can run."""

    id: str
    label: str
    available: bool
    pays: str  # "your key", "credits", "your key, quota exhausted", "unavailable"
    strained: bool  # on the user's key, which is rate-limited or out of quota


@dataclass(frozen=True, slots=True)
class KeyWarning:
    """A strained key, once per provider: the catalogue's words, and whether credits take over."""

    provider_label: str
    message: str
    fallback: bool


@dataclass(frozen=True, slots=True)
class UnavailableGroup:
    """Models refused for the same reason, said once."""

    code: str
    message: str
    models: list[str]
    every: bool  # every model shares this reason


@dataclass(frozen=True, slots=True)
class PageData:
    options: list[ModelOption]
    key_warnings: list[KeyWarning]
    unavailable: list[UnavailableGroup]
    apex_enabled: bool
    allows_byok: bool


def _strained(m: ModelAvailability) -> bool:
    return m.key_source == KeySource.BYOK and m.key_status in STRAINED_KEY_STATUSES


def _pays(m: ModelAvailability) -> str:
    if not m.available:
        return "unavailable"
    if m.key_source != KeySource.BYOK:
        return "credits"
    if not _strained(m):
        return "your key"
    pays = f"your key, {KeyStatus(str(m.key_status)).label.lower()}"
    return f"{pays} (falls back to credits)" if m.fallback_allowed else pays


def _unavailable_groups(models: list[ModelAvailability]) -> list[UnavailableGroup]:
    refused = [m for m in models if not m.available]
    groups: dict[str, list[ModelAvailability]] = {}
    for m in refused:
        groups.setdefault(m.reason_code or "", []).append(m)
    return [
        UnavailableGroup(
            code=code,
            message=members[0].reason or "",
            models=[m.model.label for m in members],
            every=len(members) == len(models),
        )
        for code, members in groups.items()
    ]


def _key_warnings(models: list[ModelAvailability]) -> list[KeyWarning]:
    warnings: dict[str, KeyWarning] = {}
    for m in models:
        if m.available and _strained(m) and m.model.provider not in warnings:
            warnings[m.model.provider] = KeyWarning(
                provider_label=Provider(m.model.provider).label,
                message=CATALOGUE[str(m.key_status)].message,
                fallback=m.fallback_allowed,
            )
    return list(warnings.values())


def _page_data(user: User) -> PageData:
    models = [m for m in model_availability_list(user=user) if m.model.kind == Kind.CHAT]
    account = billing_account_for(user=user)
    return PageData(
        options=[ModelOption(m.model.id, m.model.label, m.available, _pays(m), _strained(m)) for m in models],
        key_warnings=_key_warnings(models),
        unavailable=_unavailable_groups(models),
        apex_enabled=account.apex_enabled,
        allows_byok=account.allows_byok,
    )


def _default_model(options: list[ModelOption]) -> str:
    """Haiku when it runs normally, else the first model that does; a strained key's model only
    when nothing else can run."""
    ready = [o.id for o in options if o.available and not o.strained]
    for candidates in (ready, [o.id for o in options if o.available]):
        if PREFERRED_DEFAULT_MODEL in candidates:
            return PREFERRED_DEFAULT_MODEL
        if candidates:
            return candidates[0]
    return ""


def _max_tokens(raw: str) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= MAX_TOKENS_LIMIT else None


@dataclass(frozen=True, slots=True)
class TryUsage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class TryResult:
    """What the page shows of a call: the answer, who paid and what it cost."""

    model: CatalogModel
    key_source: str
    text: str
    usage: TryUsage
    credits_charged: int
    credits_would_cost: int = 0  # on the user's key: what the call would have cost in credits


def _result(model_id: str, answer: local.Answer) -> TryResult:
    completion = answer.json()
    usage = completion.get("usage") or {}
    return TryResult(
        model=resolve(model_id),
        key_source=answer.key_source,
        text=completion["choices"][0]["message"].get("content") or "",
        usage=TryUsage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
        credits_charged=answer.credits_charged,
        credits_would_cost=answer.receipt.would_cost if answer.receipt is not None else 0,
    )


async def _send(user: User, model: str, prompt: str, max_tokens: int) -> TryResult:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_completion_tokens": max_tokens}
    answer = await local.chat(user.pk, body)
    if answer.status != 200:
        raise answer_error(answer)
    return _result(model, answer)


def _served_by(user: User, result: TryResult) -> dict[str, Any]:
    """Which key served the call: the user's own (with its hint), or Niyra's credits."""
    provider = str(result.model.provider)
    key = provider_key_get(user=user, provider=provider) if result.key_source == KeySource.BYOK else None
    return {
        "byok": result.key_source == KeySource.BYOK,
        "provider_label": "Anthropic" if provider == "anthropic" else "OpenAI",
        "hint": key.hint if key is not None else "",
        "balance": credit_balance(user=user),
    }


def _render(request: HttpRequest, context: dict[str, Any]) -> HttpResponse:
    template = "dashboard/_try_result.html" if is_htmx(request) else "dashboard/try.html"
    response = render(request, template, context)
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
@dashboard_login_required(return_to="dashboard:try")
async def try_message(request: HttpRequest) -> HttpResponse:
    user = await arequest_user(request)
    data = await sync_to_async(_page_data)(user)
    default_model = _default_model(data.options)
    context: dict[str, Any] = {
        "models": data.options,
        "key_warnings": data.key_warnings,
        "unavailable": data.unavailable,
        "runnable": bool(default_model),
        "apex_enabled": data.apex_enabled,
        "allows_byok": data.allows_byok,
        "apex_gated": "Apex doesn't appear? Apex is alpha-gated — email hi@niyra.ai for access.",
        "model": default_model,
        "prompt": "",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "max_tokens_limit": MAX_TOKENS_LIMIT,
        "max_prompt": MAX_PROMPT_CHARACTERS,
        "result": None,
        "error": None,
    }
    if request.method == "POST":
        model = request.POST.get("model", "").strip()
        prompt = request.POST.get("prompt", "")
        max_tokens = _max_tokens(request.POST.get("max_tokens", ""))
        context.update(model=model or context["model"], prompt=prompt[:MAX_PROMPT_CHARACTERS])
        context["max_tokens"] = max_tokens or DEFAULT_MAX_TOKENS
        error: ShownError | None = None
        if not model and not default_model and data.unavailable:
            # Nothing can run (Send is disabled; a stale page or a script still posts): the reason
            # once, never the generic "missing or invalid".
            reason = data.unavailable[0]
            error = shown_error(code=reason.code, message=reason.message)
        elif not model:
            error = shown_error(code="invalid_input", message="Choose a model.")
        elif not prompt.strip():
            error = shown_error(code="invalid_input", message="Write a message to send.")
        elif len(prompt) > MAX_PROMPT_CHARACTERS:
            error = shown_error(
                code="invalid_input", message=f"Keep the message under {MAX_PROMPT_CHARACTERS:,} characters."
            )
        elif max_tokens is None:
            error = shown_error(
                code="invalid_input", message=f"Max tokens is a whole number from 1 to {MAX_TOKENS_LIMIT:,}."
            )
        else:
            try:
                result = await _send(user, model, prompt, max_tokens)
            except NiyraError as exc:
                error = shown_error(exc)
            else:
                context["result"] = result
                context.update(await sync_to_async(_served_by)(user, result))
        context["error"] = error
    return await sync_to_async(_render)(request, context)


# --- Settings → BYOK: the fallback to credits ---------------------------------------------------

MC_PER_CREDIT = 1000


def fallback_panel_context(user: User, *, error: ShownError | None = None, notice: str = "") -> dict[str, Any]:
    preference = RoutingPreference.objects.filter(user=user).first()
    cap = preference.fallback_daily_cap_mc if preference is not None else None
    return {
        "fallback_on": bool(preference and preference.fallback_to_credits),
        "fallback_cap": cap,
        "fallback_cap_credits": "" if cap is None else str(Decimal(cap) / MC_PER_CREDIT),
        "fallback_used_today": fallback_spend_today(user=user),
        "fallback_error": error,
        "fallback_notice": notice,
    }


def _cap_millicredits(raw: str) -> int | None:
    """The cap field, in credits (up to 3 decimals) -> millicredits; empty: no cap."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        credits = Decimal(raw)
    except InvalidOperation:
        credits = Decimal("NaN")
    millicredits = credits * MC_PER_CREDIT
    if not millicredits.is_finite() or millicredits != millicredits.to_integral_value():
        raise NiyraError(
            errors.INVALID_INPUT,
            message="Write the daily cap as a number of credits (up to 3 decimals), or leave it empty.",
        )
    return int(millicredits)


@require_POST
@dashboard_login_required(return_to="dashboard:byok")
def fallback_settings(request: HttpRequest) -> HttpResponse:
    """The fallback panel's form: on/off and the daily cap, through the preference service."""
    user = request_user(request)
    error: ShownError | None = None
    notice = ""
    try:
        cap = _cap_millicredits(request.POST.get("cap", ""))
        routing_preference_set(
            user=user, fallback_to_credits=request.POST.get("fallback") == "on", fallback_daily_cap_mc=cap
        )
    except NiyraError as exc:
        detail = exc.detail.get("fallback_daily_cap_mc") if isinstance(exc.detail, dict) else None
        error = shown_error(code=exc.code, message=str(detail[0])) if detail else shown_error(exc)
    else:
        notice = "Saved."
    if not is_htmx(request):  # a plain form post (no JavaScript): back to the page, with the outcome
        if error is None:
            messages.success(request, "Fallback to credits: saved.")
        else:
            messages.error(request, f"Fallback to credits: {error.message}")
        return redirect("dashboard:byok")
    context = fallback_panel_context(user, error=error, notice=notice)
    if error is not None:  # the form as it was sent, to correct (nothing was saved)
        context["fallback_on"] = request.POST.get("fallback") == "on"
        context["fallback_cap_credits"] = request.POST.get("cap", "")
    # htmx swaps 2xx answers only: an error is shown in the panel with a 200 (as the key cards do).
    return render(request, "routing/_fallback.html", context)
