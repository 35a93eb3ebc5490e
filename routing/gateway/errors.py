"""Error bodies in each provider's shape, so the official SDKs raise their typed exceptions.

Niyra's own refusals carry the catalogue's `code`, message and detail beside the provider's
error object (`{code, message, detail}` is what every Niyra API answers with).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson

from core import errors
from core.errors import NiyraError


class Shape(StrEnum):
    ANTHROPIC = "anthropic"
    OPENAI = "openai"


# Anthropic's error `type` for each status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "api_error",
    529: "overloaded_error",
}
# OpenAI's error `type` for each status.
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_body(exc: NiyraError, shape: Shape) -> dict[str, Any]:
    body = exc.as_dict()
    param, field_message = errors.field_error_message(exc.detail) if exc.spec is errors.INVALID_INPUT else (None, None)
    if field_message:
        body["message"] = field_message
    if shape is Shape.ANTHROPIC:
        kind = ANTHROPIC_TYPES.get(exc.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": body["message"], "code": exc.code}} | body
    if isinstance(exc.detail, dict) and param is None:
        named = exc.detail.get("param")
        param = named if isinstance(named, str) else None
    kind = OPENAI_TYPES.get(exc.status, "server_error" if exc.status >= 500 else "invalid_request_error")
    return {"error": {"message": body["message"], "type": kind, "param": param, "code": exc.code}} | body


def error_bytes(exc: NiyraError, shape: Shape) -> bytes:
    return orjson.dumps(error_body(exc, shape))


def provider_error_message(payload: object) -> tuple[str | None, str | None, str | None]:
    """(type, code, message) of a provider's error body in either shape; None where absent."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, None, None
    kind, code, message = error.get("type"), error.get("code"), error.get("message")
    return (
        kind if isinstance(kind, str) else None,
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )


def with_niyra_message(payload: object, exc: NiyraError, shape: Shape) -> dict[str, Any]:
    """The provider's error body with the catalogue's words in place of the provider's message
    (used on the user's own key: the product page's troubleshooting text, never a provider
    message that may quote part of the key)."""
    body = error_body(exc, shape)
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str):
        body["error"]["type"] = error["type"]
    return body
