"""DRF's EXCEPTION_HANDLER: every API error becomes `{"code", "message", "detail"}`."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_default_handler

from core.dbpool import database_unreachable, pools_check
from core.errors import (
    AUTHENTICATION_FAILED,
    INTERNAL_ERROR,
    INVALID_INPUT,
    MALFORMED_JSON,
    METHOD_NOT_ALLOWED,
    NOT_AUTHENTICATED,
    NOT_FOUND,
    PERMISSION_DENIED,
    THROTTLED,
    UNSUPPORTED_MEDIA_TYPE,
    ErrorSpec,
    NiyraError,
    database_unavailable_error,
    error_body,
)

logger = logging.getLogger(__name__)

_DRF_MAP: tuple[tuple[type[drf_exceptions.APIException], ErrorSpec], ...] = (
    (drf_exceptions.ParseError, MALFORMED_JSON),
    (drf_exceptions.ValidationError, INVALID_INPUT),
    (drf_exceptions.NotAuthenticated, NOT_AUTHENTICATED),
    (drf_exceptions.AuthenticationFailed, AUTHENTICATION_FAILED),
    (drf_exceptions.PermissionDenied, PERMISSION_DENIED),
    (drf_exceptions.NotFound, NOT_FOUND),
    (drf_exceptions.MethodNotAllowed, METHOD_NOT_ALLOWED),
    (drf_exceptions.UnsupportedMediaType, UNSUPPORTED_MEDIA_TYPE),
    (drf_exceptions.NotAcceptable, INVALID_INPUT),
    (drf_exceptions.Throttled, THROTTLED),
)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every API error becomes `{"code", "message", "detail"}`."""
    if isinstance(exc, NiyraError):
        return Response(exc.as_dict(), status=exc.status, headers=exc.headers)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    # Let DRF compute headers (WWW-Authenticate, Retry-After) and the status it chose.
    if isinstance(exc, drf_exceptions.APIException) and (response := drf_default_handler(exc, context)) is not None:
        spec = next((s for cls, s in _DRF_MAP if isinstance(exc, cls)), None)
        if spec is None:
            spec = ErrorSpec(code=str(exc.default_code), status=exc.status_code, message=str(exc.detail))
        detail: Any = response.data if isinstance(exc, drf_exceptions.ValidationError) else None
        wait = getattr(exc, "wait", None)
        if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
            detail = {"retry_after_seconds": int(wait) + 1}
        response.data = error_body(spec, detail=detail)
        return response

    if database_unreachable(exc):  # PostgreSQL down, restarting or failing over: retry shortly
        logger.warning("database unreachable (%s) in the API", exc.__class__.__name__)
        pools_check()
        error = database_unavailable_error()
        return Response(error.as_dict(), status=error.status, headers={**error.headers, "Cache-Control": "no-store"})

    # Anything else is our bug. Log it (the redaction filter guards the record) and answer
    # with JSON; never a traceback or Django's HTML page.
    view = context.get("view")
    logger.exception("unhandled API error in %s", type(view).__name__ if view else "view")
    return Response(error_body(INTERNAL_ERROR), status=INTERNAL_ERROR.status)
