"""Dashboard "Try a message": send a prompt to a chosen model through `request.llm` (the same
dispatcher as the API) and see the answer, which key served it and what it cost.

An async view: the provider call is awaited with no thread or database connection held. ORM
reads and template rendering (which touches `request.user`) run in a thread.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from accounts.auth import arequest_user
from accounts.models import User
from byok.selectors import provider_key_get
from core.db import db_sync_to_async
from core.errors import NiyraError
from core.pages import ShownError, dashboard_login_required, is_htmx, shown_error
from credits.models import KeySource
from credits.selectors import credit_balance
from providers.types import ChatMessage
from routing.catalog import Kind
from routing.dispatcher import LLMDispatcher, RoutedMessage
from routing.selectors import ModelAvailability, model_availability_list

MAX_PROMPT_CHARACTERS = 20_000
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096
PREFERRED_DEFAULT_MODEL = "claude-haiku-4-5"


def _page_data(user: User) -> tuple[list[ModelAvailability], bool]:
    models = [m for m in model_availability_list(user=user) if m.model.kind == Kind.CHAT]
    return models, credit_balance(user=user).apex_enabled


def _default_model(models: list[ModelAvailability]) -> str:
    available = [m.model.id for m in models if m.available]
    if PREFERRED_DEFAULT_MODEL in available:
        return PREFERRED_DEFAULT_MODEL
    return available[0] if available else ""


def _max_tokens(raw: str) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= MAX_TOKENS_LIMIT else None


def _served_by(user: User, result: RoutedMessage) -> dict[str, Any]:
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
    models, apex_enabled = await db_sync_to_async(_page_data)(user)
    context: dict[str, Any] = {
        "models": models,
        "unavailable": [m for m in models if not m.available],
        "apex_enabled": apex_enabled,
        "apex_gated": "Apex doesn't appear? Apex is alpha-gated — email hi@niyra.ai for access.",
        "model": _default_model(models),
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
        if not prompt.strip():
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
            llm: LLMDispatcher = request.llm  # type: ignore[attr-defined]
            try:
                result = await llm.message(
                    model=model, messages=[ChatMessage(role="user", content=prompt)], max_tokens=max_tokens
                )
            except NiyraError as exc:
                error = shown_error(exc)
            else:
                context["result"] = result
                context.update(await db_sync_to_async(_served_by)(user, result))
        context["error"] = error
    return await db_sync_to_async(_render)(request, context)
