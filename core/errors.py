"""The error catalogue: one stable `code`, HTTP status and user-facing message per error.

The API, the dashboard and the logs use the same words. Domain code raises `NiyraError(ERR)`;
`core.exception_handler.api_exception_handler` turns it (and DRF's own exceptions) into
`{"code", "message", "detail"}`.
Messages for BYOK and routing are the product page's troubleshooting text, word for word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.csrf import csrf_exempt
from django.views.defaults import page_not_found, server_error


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: str
    status: int
    message: str


CATALOGUE: dict[str, ErrorSpec] = {}

# The product page's messages read "Title — what to do" ("Rate limited — Your vendor limit…").
TITLE_SEPARATOR = " — "


def message_parts(message: str) -> tuple[str, str]:
    """(title, what to do) of a "Title — what to do" message; a message without one is all title."""
    title, _, advice = message.partition(TITLE_SEPARATOR)
    return title, advice


def _spec(code: str, status: int, message: str) -> ErrorSpec:
    if code in CATALOGUE:
        raise ValueError(f"duplicate error code {code!r}")
    spec = ErrorSpec(code=code, status=status, message=message)
    CATALOGUE[code] = spec
    return spec


# --- Generic request errors -----------------------------------------------------------------
INVALID_INPUT = _spec("invalid_input", 400, "Some fields are missing or invalid.")
MALFORMED_JSON = _spec("malformed_json", 400, "The request body is not valid JSON.")
UNSUPPORTED_MEDIA_TYPE = _spec(
    "unsupported_media_type", 415, "Send the request body as JSON (Content-Type: application/json)."
)
NOT_AUTHENTICATED = _spec("not_authenticated", 401, "Sign in, or send an API token as 'Authorization: Bearer <token>'.")
AUTHENTICATION_FAILED = _spec("authentication_failed", 401, "That API token is not valid. It may have been revoked.")
PERMISSION_DENIED = _spec("permission_denied", 403, "You don't have permission to do that.")
NOT_FOUND = _spec("not_found", 404, "Nothing here. Check the URL.")
METHOD_NOT_ALLOWED = _spec("method_not_allowed", 405, "This endpoint does not accept that method.")
THROTTLED = _spec("throttled", 429, "Too many requests. Try again later.")
LOGIN_THROTTLED = _spec("login_throttled", 429, "Too many sign-in attempts. Wait a few minutes and try again.")
INTERNAL_ERROR = _spec(
    "internal_error", 500, "Something went wrong on our side. Nothing was charged; please try again."
)
# PostgreSQL can't be reached (restarting, failing over, or no connection within the pool's
# timeout): `core.dbpool.database_unreachable` tells it from a failing query.
DATABASE_UNAVAILABLE = _spec(
    "database_unavailable",
    503,
    "Service unavailable — our database can't be reached for a moment. Nothing was charged; retry shortly.",
)
DATABASE_RETRY_AFTER_SECONDS = 5  # a restart takes a few seconds, a failover a few tens

# --- BYOK (product page: Troubleshooting) -----------------------------------------------------
KEY_INVALID = _spec(
    "key_invalid",
    400,
    "Key invalid — Paste it without quotes. Anthropic keys start with sk-ant-, OpenAI keys with sk-proj- or sk-.",
)
KEY_WRONG_PROVIDER = _spec("key_wrong_provider", 400, "That looks like a key for another provider.")
KEY_RATE_LIMITED = _spec(
    "rate_limited", 429, "Rate limited — Your vendor limit was hit. Wait or upgrade your tier with the provider."
)
KEY_QUOTA_EXHAUSTED = _spec("quota_exhausted", 402, "Quota exhausted — Top up your provider account.")
KEY_NEEDS_REENTRY = _spec(
    "key_needs_reentry", 409, "Your saved key can no longer be read. Paste it again to keep using it."
)
KEY_NOT_FOUND = _spec("key_not_found", 404, "No key is connected for this provider.")
PLAN_NO_BYOK = _spec("plan_no_byok", 403, "BYOK is available on Pro and Alpha plans. Upgrade to bring your own key.")
PROVIDER_UNAVAILABLE = _spec(
    "provider_unavailable",
    503,
    "Couldn't reach the provider, try again. Nothing was charged.",
)
# The same outage met while saving or testing a key: saving never charges, so say what matters
# there instead (PROVIDER_UNAVAILABLE's code and status, this message, the provider named).
KEY_CHECK_UNAVAILABLE_MESSAGE = (
    "Couldn't reach {provider} to check the key. Your saved key, if any, is unchanged. Try again."
)
# An empty paste (or only whitespace and quotes) is a missing key, not a malformed one.
KEY_MISSING_MESSAGE = "Paste your {provider} key into the field."

# --- Routing --------------------------------------------------------------------------------
MODEL_NOT_SUPPORTED = _spec("model_not_supported", 400, "That model isn't supported. See the list of available models.")
THIRD_PARTY_PROVIDER = _spec(
    "third_party_provider",
    400,
    "No third-party providers via BYOK yet (no Together, Groq, etc.). Use a Niyra-hosted tier instead.",
)
APEX_NOT_ENABLED = _spec("apex_not_enabled", 403, "Apex is alpha-gated. Email hi@niyra.ai for access.")
APEX_NEEDS_KEY = _spec(
    "apex_needs_key",
    403,
    "Apex (Fable 5) is BYOK-only. Add your Anthropic key in Settings → BYOK to use it.",
)
KEY_REJECTED = _spec(
    "key_rejected",
    400,
    "Key invalid — your provider rejected this key. Update it or disconnect it in Settings → BYOK.",
)
PLAN_KEY_UNUSABLE = _spec(
    "plan_key_unusable",
    403,
    "BYOK is available on Pro and Alpha plans, so your saved key can't be used. "
    "Upgrade, or disconnect the key to pay in credits.",
)
MODEL_RETIRED = _spec(
    "model_retired",
    400,
    "That model was retired by its provider. Use its replacement from the list of available models.",
)
# The same refusal with the model and its replacement named (detail: {"model", "replacement"}).
MODEL_RETIRED_MESSAGE = "{model} was retired by its provider. Use {replacement} instead."
UNSUPPORTED_PARAMETER = _spec(
    "unsupported_parameter",
    400,
    "A parameter in this request can't be sent to this model through this endpoint. Nothing was charged.",
)
# Filled by the gateway (detail: {"param", "model"}): the parameter, the model, and why not.
UNSUPPORTED_PARAMETER_MESSAGE = "{param} can't be sent to {model} through this endpoint: {reason}"
REQUEST_TOO_LARGE = _spec("request_too_large", 413, "The request body is too large.")

# --- Credits --------------------------------------------------------------------------------
INSUFFICIENT_CREDITS = _spec(
    "insufficient_credits", 402, "Not enough credits. Top up, or bring your own key on Pro and Alpha."
)
IDEMPOTENCY_CONFLICT = _spec(
    "idempotency_conflict",
    409,
    "This idempotency key was already used with different parameters.",
)
NO_USER_MESSAGE = _spec(
    "no_user_message", 400, "Send at least one user message: system messages alone leave nothing to answer."
)
USER_NOT_FOUND = _spec("user_not_found", 400, "No user with that id or email.")
INVALID_PERIOD = _spec("invalid_period", 400, "The period must start before it ends and span at most 366 days.")
UNKNOWN_CATEGORY = _spec(
    "unknown_category",
    400,
    "Unknown usage category. Use embeddings, tool_call, voice_tts, voice_stt, enrichment or telephony.",
)
HOLD_NOT_FOUND = _spec("hold_not_found", 404, "That credit hold doesn't exist.")
HOLD_ALREADY_RESOLVED = _spec(
    "hold_already_resolved",
    409,
    "This credit hold was already settled or voided. A hold resolves exactly once.",
)


class NiyraError(Exception):
    """A domain error with a catalogue entry; services raise it, surfaces render it."""

    def __init__(
        self,
        spec: ErrorSpec,
        *,
        detail: Any = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.detail = detail
        self.message = message or spec.message
        self.headers = headers or {}
        super().__init__(f"{spec.code}: {self.message}")

    @property
    def code(self) -> str:
        return self.spec.code

    @property
    def status(self) -> int:
        return self.spec.status

    def as_dict(self) -> dict[str, Any]:
        return error_body(self.spec, detail=self.detail, message=self.message)


def database_unavailable_error() -> NiyraError:
    """DATABASE_UNAVAILABLE, with the Retry-After a client should wait."""
    return NiyraError(DATABASE_UNAVAILABLE, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})


def error_body(spec: ErrorSpec, *, detail: Any = None, message: str | None = None) -> dict[str, Any]:
    return {"code": spec.code, "message": message or spec.message, "detail": detail}


_WHOLE_OBJECT = "non_field_errors"  # DRF's key for an error about an object, not one of its fields


def first_field_error(detail: Any, path: str = "") -> tuple[str | None, str] | None:
    """The first error in DRF-style field errors, as (field path, reason).

    `{"messages": [{}, {"role": ["..."]}]}` gives `("messages[1].role", "...")`; an error about
    the whole body (`non_field_errors`) has no path. None when `detail` holds no error.
    """
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == _WHOLE_OBJECT:
                inner = path
            elif isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                inner = f"{path}[{key}]"
            else:
                inner = f"{path}.{key}" if path else str(key)
            if (found := first_field_error(value, inner)) is not None:
                return found
        return None
    if isinstance(detail, list):
        for index, item in enumerate(detail):
            inner = f"{path}[{index}]" if isinstance(item, dict) else path
            if (found := first_field_error(item, inner)) is not None:
                return found
        return None
    reason = str(detail) if detail is not None else ""
    return (path or None, reason) if reason else None


def field_error_message(detail: Any) -> tuple[str | None, str | None]:
    """(field path, "<field>: <reason>") for the first field error in `detail`, else (None, None)."""
    found = first_field_error(detail)
    if found is None:
        return None, None
    param, reason = found
    return param, f"{param}: {reason}" if param else reason


# --- Django-level handlers (routes DRF never saw) -------------------------------------------
_API_PREFIXES = ("/api/", "/v1/")


def wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(_API_PREFIXES) or "application/json" in request.headers.get("Accept", "")


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_json(request):
        return JsonResponse(error_body(NOT_FOUND), status=404)
    return page_not_found(request, exception or Http404())


def handler500(request: HttpRequest) -> HttpResponse:
    if wants_json(request):
        return JsonResponse(error_body(INTERNAL_ERROR), status=500)
    return server_error(request)


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: the catalogue's JSON error for the API, a plain page (which needs
    no database: no context processors) for the dashboard."""
    error = database_unavailable_error()
    if wants_json(request):
        response: HttpResponse = JsonResponse(error.as_dict(), status=error.status)
    else:
        response = HttpResponse(render_to_string("503.html"), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt  # a 404 for any method: the CSRF check must not turn it into an HTML 403
def api_not_found(request: HttpRequest) -> HttpResponse:
    return JsonResponse(error_body(NOT_FOUND), status=404)


# --- OAuth connections (connections) ---------------------------------------------------------------
OAUTH_INTEGRATION_UNKNOWN = _spec(
    "oauth_integration_unknown", 404, "No such integration. See the list of integrations."
)
OAUTH_CONNECTION_NOT_FOUND = _spec("oauth_connection_not_found", 404, "This integration is not connected.")
OAUTH_STATE_INVALID = _spec(
    "oauth_state_invalid",
    400,
    "This connect link is unknown, expired or was already used. Start connecting again.",
)
OAUTH_CODE_MISSING = _spec(
    "oauth_code_missing", 400, "The provider sent no authorization code. Start connecting again."
)
OAUTH_ACCESS_DENIED = _spec(
    "oauth_access_denied", 400, "The provider did not grant access (it was declined or failed). Nothing was changed."
)
OAUTH_CODE_REJECTED = _spec(
    "oauth_code_rejected",
    400,
    "The provider refused the authorization code (expired, used or failed verification). Start connecting again.",
)
OAUTH_NEEDS_REAUTH = _spec(
    "oauth_needs_reauth", 409, "Access to this integration was revoked or has expired. Reconnect it to keep using it."
)
OAUTH_CONNECTION_ERROR = _spec(
    "oauth_connection_error",
    409,
    "This connection stopped refreshing after repeated failures. Reconnect it, or try again later.",
)
OAUTH_NO_REFRESH_TOKEN = _spec(
    "oauth_no_refresh_token", 409, "The provider gave no way to renew this connection's access. Reconnect it."
)
OAUTH_TOKEN_UNREADABLE = _spec(
    "oauth_token_unreadable", 409, "This connection's saved tokens can no longer be read. Reconnect it."
)
OAUTH_PROVIDER_UNAVAILABLE = _spec(
    "oauth_provider_unavailable", 503, "Couldn't reach the integration's provider, try again."
)
OAUTH_PROVIDER_REJECTED = _spec(
    "oauth_provider_rejected",
    502,
    "The integration's provider refused the request. Niyra's client settings may be wrong; we are on it.",
)
OAUTH_TOKEN_RESPONSE_MALFORMED = _spec(
    "oauth_token_response_malformed",
    502,
    "The integration's provider sent an unusable token response. Your existing connection was not changed.",
)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: JSON for the API, Django's page for the dashboard."""
    if wants_json(request):
        return JsonResponse(error_body(PERMISSION_DENIED, message="CSRF token missing or incorrect."), status=403)
    return django_csrf_failure(request, reason=reason)
