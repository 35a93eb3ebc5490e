"""Provider adapters: the one-token probe through the real SDKs, and the SDK-error mapping."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from django.utils import timezone

from core import errors
from providers import PROBE_MODELS, ProbeResult, Provider, get_adapter, map_provider_error
from providers.errors import retry_after_seconds
from sandbox import SandboxServer, anthropic_key, openai_key

KEYS = {"anthropic": anthropic_key, "openai": openai_key}
PROVIDERS = Provider.values


@pytest.fixture(autouse=True)
def _providers_are_the_sandbox(sandbox_providers: SandboxServer) -> SandboxServer:
    return sandbox_providers


def probe(provider: str, key: str, **kwargs: Any) -> ProbeResult:
    return asyncio.run(get_adapter(provider).probe(key, **kwargs))


# --- probe, against the sandbox ----------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_good_key_probes_ok_with_the_cheapest_model(provider: str, sandbox: SandboxServer) -> None:
    key = KEYS[provider]()
    result = probe(provider, key)
    assert result.ok and result.code == "ok" and result.key_is_genuine
    assert (result.provider, result.model) == (provider, PROBE_MODELS[provider])
    [record] = sandbox.log.records()
    assert record["model"] == PROBE_MODELS[provider] and record["status"] == 200
    assert sandbox.log.count(key=key) == 1


def test_probe_models_are_the_cheap_ones() -> None:
    assert PROBE_MODELS["anthropic"].startswith("claude-haiku-4-")
    assert "nano" in PROBE_MODELS["openai"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("word", "spec", "genuine"),
    [
        ("invalid", errors.KEY_INVALID, False),
        ("ratelimit", errors.KEY_RATE_LIMITED, True),
        ("noquota", errors.KEY_QUOTA_EXHAUSTED, True),
        ("overloaded", errors.PROVIDER_UNAVAILABLE, False),
        ("error", errors.PROVIDER_UNAVAILABLE, False),
        ("malformed", errors.PROVIDER_UNAVAILABLE, False),
    ],
)
def test_each_provider_answer_maps_to_the_catalogue(
    provider: str, word: str, spec: errors.ErrorSpec, genuine: bool, sandbox: SandboxServer
) -> None:
    key = KEYS[provider](word)
    result = probe(provider, key)
    assert result.error is not None and result.error.spec is spec
    # Our words, never the provider's; an outage met by a key check says so (nothing to charge).
    if spec is errors.PROVIDER_UNAVAILABLE:
        label = Provider(provider).label
        assert result.error.message == errors.KEY_CHECK_UNAVAILABLE_MESSAGE.format(provider=label)
    else:
        assert result.error.message == spec.message
    assert result.key_is_genuine is genuine
    assert sandbox.log.count(key=key) == 1  # max_retries=0: exactly one request, even for 429/5xx


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limits_pass_retry_after_on(provider: str) -> None:
    result = probe(provider, KEYS[provider]("ratelimit"))
    assert result.error is not None
    assert result.error.headers == {"Retry-After": "7"}
    assert result.error.detail == {"provider": provider, "retry_after_seconds": 7}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_that_hangs_is_unavailable_within_the_timeout(provider: str) -> None:
    result = probe(provider, KEYS[provider]("hang"), timeout=0.3)
    assert result.error is not None and result.error.spec is errors.PROVIDER_UNAVAILABLE
    assert result.elapsed_ms < 1500


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_slow_provider_within_the_timeout_is_fine(provider: str) -> None:
    assert probe(provider, KEYS[provider]("slow100"), timeout=5).ok


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_that_is_not_there_is_unavailable(provider: str, settings: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    setattr(
        settings, f"{provider.upper()}_BASE_URL", f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    )
    result = probe(provider, KEYS[provider](), timeout=2)
    assert result.error is not None and result.error.spec is errors.PROVIDER_UNAVAILABLE


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_messages_never_reach_the_logs(provider: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for word in ("invalid", "ratelimit", "noquota", "error", "overloaded"):
        key = KEYS[provider](word)
        probe(provider, key)
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert key not in text and key[-12:] not in text
    text = "\n".join(r.getMessage() for r in caplog.records)
    for provider_words in ("Incorrect API key", "credit balance", "exceeded your current quota", "Internal server"):
        assert provider_words not in text
    assert "HTTP 500" in text  # the status is logged


# --- the mapping, for answers the sandbox does not produce ----------------------------------


def _response(status: int, *, headers: dict[str, str] | None = None, body: Any = None) -> httpx2.Response:
    return httpx2.Response(
        status, headers=headers or {}, json=body, request=httpx2.Request("POST", "https://api.example/v1")
    )


def anthropic_error(status: int, etype: str, message: str = "m", error_code: str | None = None, **kw: Any) -> Any:
    error: dict[str, Any] = {"type": etype, "message": message}
    if error_code:
        error["details"] = {"error_code": error_code}
    body = {"type": "error", "error": error}
    return anthropic.APIStatusError("Error", response=_response(status, body=body, **kw), body=body)


def openai_error(status: int, code: str | None, etype: str = "invalid_request_error", **kw: Any) -> Any:
    body = {"message": "Incorrect API key provided: sk-proj-****abcd", "type": etype, "code": code, "param": None}
    cls = openai.RateLimitError if status == 429 else openai.APIStatusError
    return cls("Error", response=_response(status, body={"error": body}, **kw), body=body)


@pytest.mark.parametrize(
    ("exc", "spec"),
    [
        (anthropic_error(401, "authentication_error"), errors.KEY_INVALID),
        (
            anthropic_error(400, "invalid_request_error", "Your credit balance is too low to access"),
            errors.KEY_QUOTA_EXHAUSTED,
        ),
        (anthropic_error(400, "invalid_request_error", "messages: Field required"), errors.PROVIDER_UNAVAILABLE),
        (anthropic_error(402, "billing_error"), errors.KEY_QUOTA_EXHAUSTED),
        (
            anthropic_error(429, "rate_limit_error", error_code="enforced_spend_limit_reached"),
            errors.KEY_QUOTA_EXHAUSTED,
        ),
        (anthropic_error(429, "rate_limit_error"), errors.KEY_RATE_LIMITED),
        (anthropic_error(529, "overloaded_error"), errors.PROVIDER_UNAVAILABLE),
        (anthropic_error(403, "permission_error"), errors.PROVIDER_UNAVAILABLE),
        (anthropic_error(404, "not_found_error"), errors.PROVIDER_UNAVAILABLE),
        (openai_error(401, "invalid_api_key"), errors.KEY_INVALID),
        (openai_error(429, "insufficient_quota", "insufficient_quota"), errors.KEY_QUOTA_EXHAUSTED),
        (openai_error(429, "rate_limit_exceeded", "requests"), errors.KEY_RATE_LIMITED),
        (openai_error(503, None, "server_error"), errors.PROVIDER_UNAVAILABLE),
        (openai_error(404, "model_not_found"), errors.PROVIDER_UNAVAILABLE),
        (anthropic.APITimeoutError(request=httpx2.Request("POST", "https://x")), errors.PROVIDER_UNAVAILABLE),
        (openai.APIConnectionError(request=httpx2.Request("POST", "https://x")), errors.PROVIDER_UNAVAILABLE),
        (TimeoutError(), errors.PROVIDER_UNAVAILABLE),
        (ValueError("Expecting value: line 1 column 1"), errors.PROVIDER_UNAVAILABLE),
    ],
    ids=lambda v: v.code if isinstance(v, errors.ErrorSpec) else type(v).__name__,
)
def test_map_provider_error(exc: BaseException, spec: errors.ErrorSpec) -> None:
    # The provider whose SDK raised it (one rule reads both: `providers.errors.provider_failure`)
    mapped = map_provider_error(exc, provider="openai" if isinstance(exc, openai.OpenAIError) else "anthropic")
    assert mapped.spec is spec and mapped.message == spec.message
    assert "****" not in str(mapped.as_dict()) and "Incorrect" not in str(mapped.as_dict())


def test_unexpected_statuses_are_logged_with_the_status_but_not_the_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    exc = openai_error(403, "unsupported_country_region_territory", headers={"x-request-id": "req_123"})
    map_provider_error(exc, provider="openai")
    [record] = caplog.records
    assert "HTTP 403" in record.getMessage() and "req_123" in record.getMessage()
    assert "sk-proj" not in record.getMessage() and "Incorrect" not in record.getMessage()


def test_a_niyra_error_passes_through() -> None:
    error = errors.NiyraError(errors.KEY_INVALID)
    assert map_provider_error(error, provider="openai") is error


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7),
        ({"retry-after": "1.2"}, 2),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 2),
        ({"retry-after": "99999"}, 3600),
        ({"retry-after": "-5"}, 0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], seconds: int | None) -> None:
    assert retry_after_seconds(httpx2.Headers(headers)) == seconds


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(timezone.now() + timedelta(seconds=30), usegmt=True)
    assert 28 <= (retry_after_seconds(httpx2.Headers({"retry-after": when})) or 0) <= 31
