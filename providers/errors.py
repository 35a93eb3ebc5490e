"""The one mapping from SDK exceptions to the error catalogue.

Provider error messages never pass through: OpenAI echoes a masked key in its 401 message and
both providers' wording changes. Users get the catalogue's words (the product page's); logs get
the provider, the HTTP status and the error type, never the message or the body.
"""

from __future__ import annotations

import logging
import math
import re
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import anthropic
import openai
from django.utils import timezone

from core.errors import (
    KEY_INVALID,
    KEY_QUOTA_EXHAUSTED,
    KEY_RATE_LIMITED,
    PROVIDER_UNAVAILABLE,
    NiyraError,
)

logger = logging.getLogger(__name__)

_STATUS_ERRORS = (anthropic.APIStatusError, openai.APIStatusError)
_TIMEOUTS = (anthropic.APITimeoutError, openai.APITimeoutError, TimeoutError)
_CONNECTION_ERRORS = (anthropic.APIConnectionError, openai.APIConnectionError, ConnectionError)

# Anthropic says "Your credit balance is too low to access the Anthropic API" with a 400; newer
# API versions add billing / spend-limit errors (402 billing_error, 429 *_spend_limit_reached).
_ANTHROPIC_CREDIT_BALANCE = "credit balance is too low"
_ANTHROPIC_QUOTA_CODES = frozenset(
    {
        "contract_spend_limit_reached",
        "enforced_spend_limit_reached",
        "linked_organization_spend_limit_reached",
        "linked_organization_billing_unavailable",
    }
)
_OPENAI_QUOTA_CODE = "insufficient_quota"
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_RETRY_AFTER_SECONDS = 3600


def map_provider_error(exc: BaseException, *, provider: str) -> NiyraError:
    """The catalogue error for anything raised while calling `provider` through its SDK.

    401 -> key invalid; quota (OpenAI `insufficient_quota`, Anthropic "credit balance is too
    low", billing and spend limits) -> quota exhausted; other 429 -> rate limited with
    `Retry-After`; 5xx/529, timeouts, connection errors and anything else -> provider
    unavailable (logged with the status, never the message).
    """
    if isinstance(exc, NiyraError):
        return exc
    if isinstance(exc, _STATUS_ERRORS):
        return _from_status(exc, provider=provider)
    if isinstance(exc, _TIMEOUTS):
        logger.warning("provider %s timed out", provider)
        return _unavailable(provider)
    if isinstance(exc, _CONNECTION_ERRORS):
        logger.warning("provider %s unreachable (%s)", provider, type(exc).__name__)
        return _unavailable(provider)
    # A 2xx with a body that is not what the SDK expects (or any other surprise): the type only,
    # since an exception's text may quote the response.
    logger.warning("provider %s call failed with %s; reported as unavailable", provider, type(exc).__qualname__)
    return _unavailable(provider)


class ProviderFailure(StrEnum):
    """What a provider's error answer means for the caller, whatever API or SDK it came through."""

    KEY_INVALID = "key_invalid"  # 401: the key is not (or no longer) accepted
    QUOTA = "quota"  # the key's account is out of credit or over a spend limit
    RATE_LIMITED = "rate_limited"  # 429, not quota
    UNAVAILABLE = "unavailable"  # 5xx, 529: the provider failed
    REQUEST = "request"  # any other 4xx: the provider refused this request (the client's to fix)


def provider_failure(
    *, provider: str, status: int, error_type: object, error_code: object, message: object
) -> ProviderFailure:
    """The one reading of a provider's error answer: its HTTP status and the `type`, `code` and
    `message` of its error object (absent ones as None)."""
    if status == 401:
        return ProviderFailure.KEY_INVALID
    if provider == "openai":
        if status == 429 and _OPENAI_QUOTA_CODE in (error_code, error_type):
            return ProviderFailure.QUOTA
    elif (
        status == 402
        or error_type == "billing_error"
        or error_code in _ANTHROPIC_QUOTA_CODES
        or (status == 400 and isinstance(message, str) and _ANTHROPIC_CREDIT_BALANCE in message.lower())
    ):
        return ProviderFailure.QUOTA
    if status == 429:
        return ProviderFailure.RATE_LIMITED
    if status >= 500:
        return ProviderFailure.UNAVAILABLE
    return ProviderFailure.REQUEST


def _from_status(exc: anthropic.APIStatusError | openai.APIStatusError, *, provider: str) -> NiyraError:
    status = exc.status_code
    failure = provider_failure(
        provider=provider,
        status=status,
        error_type=_error_type(exc),
        error_code=exc.code if isinstance(exc, openai.APIStatusError) else exc.error_code,
        message=exc.api_message if isinstance(exc, anthropic.APIStatusError) else exc.message,
    )
    if failure is ProviderFailure.KEY_INVALID:
        return NiyraError(KEY_INVALID, detail={"provider": provider})
    if failure is ProviderFailure.QUOTA:
        return NiyraError(KEY_QUOTA_EXHAUSTED, detail={"provider": provider})
    if failure is ProviderFailure.RATE_LIMITED:
        retry_after = retry_after_seconds(exc.response.headers)
        detail: dict[str, Any] = {"provider": provider}
        headers: dict[str, str] = {}
        if retry_after is not None:
            detail["retry_after_seconds"] = retry_after
            headers["Retry-After"] = str(retry_after)
        return NiyraError(KEY_RATE_LIMITED, detail=detail, headers=headers)
    level = logging.INFO if status >= 500 else logging.WARNING
    logger.log(
        level,
        "provider %s answered HTTP %d (type=%s, request_id=%s); reported as unavailable",
        provider,
        status,
        safe_token(_error_type(exc)),
        safe_token(exc.request_id),
    )
    return _unavailable(provider)


def _error_type(exc: anthropic.APIStatusError | openai.APIStatusError) -> str | None:
    kind = getattr(exc, "type", None)
    return kind if isinstance(kind, str) else None


def safe_token(value: object) -> str:
    """A provider-supplied token fit for a log line (an error type, a request id), else "-"."""
    return value if isinstance(value, str) and _SAFE_TOKEN.match(value) else "-"


def retry_after_seconds(headers: Any) -> int | None:
    """Seconds to wait, from `retry-after-ms`, `retry-after` (seconds or an HTTP date), or None."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return _bounded(float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return _bounded(float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return _bounded((when - timezone.now()).total_seconds())


def _bounded(seconds: float) -> int | None:
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0, math.ceil(seconds)))


def _unavailable(provider: str) -> NiyraError:
    return NiyraError(PROVIDER_UNAVAILABLE, detail={"provider": provider})
