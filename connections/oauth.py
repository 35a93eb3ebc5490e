"""OAuth integrations (from settings) and the client side of their endpoints.

Authlib supplies the protocol pieces that need no HTTP client (state and PKCE generation, the
authorization URL); the token and revocation requests go through `httpx2` (the HTTP client the
SDKs here use; Authlib's httpx integration wants the original `httpx`, which is not installed)
with explicit timeouts and no redirects. Every failure becomes a `TokenEndpointError` whose
`kind` says what to do about it; nothing here writes to the database.

Tokens live only in these functions' locals and in `TokenSet` (whose repr hides them); the
errors carry the provider's error *code* and the HTTP status, never its free text (a provider
may echo what it was sent).

Rules for odd token responses (see also `parse_token_response`):
* no `expires_in` -> the token is taken to live `default_expires_in` seconds (per integration,
  default 3600) when there is a refresh token: refreshing early is harmless, refreshing late
  is an outage. Without a refresh token the token is treated as non-expiring (`expires_at`
  NULL): nothing could renew it anyway.
* a refresh response without `refresh_token` -> the stored one is kept (no rotation).
* `expires_in` that is not a positive integer (an integer-valued string is accepted), a
  missing or empty `access_token`, a body that is not a JSON object -> `malformed`; the stored
  tokens are left untouched.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx2
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from django.conf import settings
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from core.errors import (
    OAUTH_CODE_REJECTED,
    OAUTH_INTEGRATION_UNKNOWN,
    OAUTH_PROVIDER_REJECTED,
    OAUTH_PROVIDER_UNAVAILABLE,
    OAUTH_TOKEN_RESPONSE_MALFORMED,
    ErrorSpec,
    NiyraError,
)

# --- Policy -------------------------------------------------------------------------------------
DEFAULT_TIMEOUT_SECONDS = 10.0  # per request phase; bounds how long a refresh holds its row lock
DEFAULT_EXPIRES_IN = 3600
MAX_EXPIRES_IN = 10 * 365 * 24 * 3600
MAX_CONSECUTIVE_FAILURES = 10  # transient or rejected refreshes in a row before status "error"
BACKOFF_BASE_SECONDS = 5.0  # 5, 10, 20, 40, 80 s ...: four retries fit in the 120 s default margin
BACKOFF_CAP_SECONDS = 300.0
AUTHORIZATION_TTL = timedelta(minutes=10)  # how long a started connect flow can be finished
_MAX_BODY_BYTES = 64 * 1024


def now() -> datetime:
    """The clock of the OAuth code (one place, so tests can move time)."""
    return timezone.now()


def refresh_interval() -> timedelta:
    return timedelta(seconds=settings.OAUTH_REFRESH_INTERVAL_SECONDS)


def refresh_margin() -> timedelta:
    return timedelta(seconds=max(60, settings.OAUTH_REFRESH_MARGIN_SECONDS))


def refresh_window() -> timedelta:
    """A poll at `t` refreshes every token expiring before `t + window`: the next poll comes at
    `t + interval`, and must still find `margin` of life left (queue delay, clock skew)."""
    return refresh_interval() + refresh_margin()


def backoff_seconds(failures: int) -> float:
    """Delay before retry number `failures` (1-based): exponential, capped."""
    return float(min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1)))


def retry_delay_seconds(failures: int, *, retry_after: float | None = None) -> float:
    """How long the refresh task waits after its `failures`-th transient failure in a row: the
    backoff, or the provider's `retry-after` when that is longer, capped."""
    return min(BACKOFF_CAP_SECONDS, max(backoff_seconds(failures), retry_after or 0.0))


def follow_up_seconds(*, issued_at: datetime, expires_at: datetime | None) -> float | None:
    """For a token living less than the tick window, when (seconds after issue) to refresh it next.

    A 5-minute poll cannot keep a token that lives under `interval + margin` alive with `margin`
    to spare, so such a token gets its own follow-up at `expires_at - margin` (or at half its
    lifetime when it lives under two margins). The refresh task skips the tick's run while the
    token is younger than half its lifetime, so tick and follow-up do not both refresh it.
    """
    if expires_at is None:
        return None
    lifetime = (expires_at - issued_at).total_seconds()
    if lifetime >= refresh_window().total_seconds():
        return None
    return max(1.0, lifetime - refresh_margin().total_seconds(), lifetime / 2)


# --- Integrations -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Integration:
    name: str
    label: str
    client_id: str
    client_secret: str = field(repr=False)
    authorize_url: str
    token_url: str
    revoke_url: str = ""
    scopes: tuple[str, ...] = ()
    redirect_uri: str = ""  # empty: derived from the request that starts the flow
    default_expires_in: int = DEFAULT_EXPIRES_IN
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    client_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"

    @property
    def supports_revocation(self) -> bool:
        return bool(self.revoke_url)

    @classmethod
    def from_setting(cls, name: str, entry: Mapping[str, Any]) -> Integration:
        scopes = entry.get("scopes") or ()
        if isinstance(scopes, str):
            scopes = scopes.replace(",", " ").split()
        return cls(
            name=name,
            label=str(entry.get("label") or name.replace("_", " ").replace("-", " ").title()),
            client_id=str(entry["client_id"]),
            client_secret=str(entry["client_secret"]),
            authorize_url=str(entry["authorize_url"]),
            token_url=str(entry["token_url"]),
            revoke_url=str(entry.get("revoke_url") or ""),
            scopes=tuple(str(s) for s in scopes),
            redirect_uri=str(entry.get("redirect_uri") or ""),
            default_expires_in=int(entry.get("default_expires_in") or DEFAULT_EXPIRES_IN),
            timeout_seconds=float(entry.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS),
            client_auth_method=entry.get("client_auth_method") or "client_secret_basic",
        )


def integrations() -> dict[str, Integration]:
    """Every configured integration, read from settings at call time (tests override them)."""
    configured: Mapping[str, Mapping[str, Any]] = getattr(settings, "OAUTH_INTEGRATIONS", {}) or {}
    return {name: Integration.from_setting(name, entry) for name, entry in configured.items()}


def find_integration(name: str) -> Integration | None:
    entry = (getattr(settings, "OAUTH_INTEGRATIONS", {}) or {}).get(name)
    return Integration.from_setting(name, entry) if entry is not None else None


def get_integration(name: str) -> Integration:
    integration = find_integration(name)
    if integration is None:
        raise NiyraError(OAUTH_INTEGRATION_UNKNOWN)  # no detail: the URL segment is not echoed
    return integration


# --- Authorization request (state + PKCE) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthorizationStart:
    url: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)


@sensitive_variables()
def authorization_start(integration: Integration, *, redirect_uri: str) -> AuthorizationStart:
    """A fresh state and PKCE (S256) verifier, and the provider URL to send the browser to."""
    state = generate_token(43)
    verifier = generate_token(64)  # RFC 7636: 43-128 characters of [A-Za-z0-9-._~]
    url = prepare_grant_uri(
        integration.authorize_url,
        client_id=integration.client_id,
        response_type="code",
        redirect_uri=redirect_uri,
        scope=" ".join(integration.scopes) or None,
        state=state,
        code_challenge=create_s256_code_challenge(verifier),
        code_challenge_method="S256",
    )
    return AuthorizationStart(url=url, state=state, code_verifier=verifier)


# --- Token endpoint -----------------------------------------------------------------------------

ErrorKind = Literal["invalid_grant", "transient", "rejected", "malformed"]


class TokenEndpointError(Exception):
    """A token/revocation request that did not yield tokens.

    kind: `invalid_grant` (the grant or code is dead: reconnect), `transient` (timeout,
    connection failure, 5xx, 429: try again later), `rejected` (any other refusal, e.g.
    invalid_client: a configuration problem), `malformed` (a 2xx whose body is not a usable
    token response). `reason` is short and safe to store and show: the provider's error code
    or the HTTP status, never the provider's free text.
    """

    def __init__(self, kind: ErrorKind, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason[:120]
        self.retry_after = retry_after

    @property
    def spec(self) -> ErrorSpec:
        return {
            "invalid_grant": OAUTH_CODE_REJECTED,
            "transient": OAUTH_PROVIDER_UNAVAILABLE,
            "rejected": OAUTH_PROVIDER_REJECTED,
            "malformed": OAUTH_TOKEN_RESPONSE_MALFORMED,
        }[self.kind]


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int | None
    scope: str | None

    def __repr__(self) -> str:
        return f"<TokenSet expires_in={self.expires_in} refresh_token={'yes' if self.refresh_token else 'no'}>"


_SAFE_ERROR_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def safe_error_code(value: Any) -> str:
    """The provider's `error` field if it looks like an RFC 6749 error code, else "unknown"."""
    if isinstance(value, str) and 0 < len(value) <= 64 and set(value) <= _SAFE_ERROR_CHARS:
        return value
    return "unknown"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        seconds = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


def _expires_in(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TokenEndpointError("malformed", "expires_in is not an integer")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise TokenEndpointError("malformed", "expires_in is not an integer")
    if value <= 0:
        raise TokenEndpointError("malformed", "expires_in is not positive")
    return min(value, MAX_EXPIRES_IN)


@sensitive_variables()
def parse_token_response(status: int, headers: Mapping[str, str], body: bytes) -> TokenSet:
    """A token endpoint's answer as a `TokenSet`, or the `TokenEndpointError` it amounts to."""
    try:
        payload: Any = json.loads(body) if body else None
    except ValueError:
        payload = None
    if status == 429:
        raise TokenEndpointError("transient", "http_429", retry_after=_retry_after(headers))
    if status >= 500:
        raise TokenEndpointError("transient", f"http_{status}", retry_after=_retry_after(headers))
    if status >= 400 or not 200 <= status < 300:
        error = safe_error_code(payload.get("error")) if isinstance(payload, dict) else "unknown"
        if error == "invalid_grant":
            raise TokenEndpointError("invalid_grant", "invalid_grant")
        raise TokenEndpointError("rejected", f"{error} (http_{status})")
    if not isinstance(payload, dict):
        raise TokenEndpointError("malformed", "the body is not a JSON object")
    if "error" in payload:  # some providers answer 200 with an error body
        error = safe_error_code(payload.get("error"))
        raise TokenEndpointError("invalid_grant" if error == "invalid_grant" else "rejected", error)
    access_token = payload.get("access_token")
    if not isinstance(access_token, str) or not access_token.strip():
        raise TokenEndpointError("malformed", "no access_token")
    token_type = payload.get("token_type")
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
        raise TokenEndpointError("malformed", "token_type is not Bearer")
    refresh_token = payload.get("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token.strip()):
        raise TokenEndpointError("malformed", "refresh_token is not a string")
    scope = payload.get("scope")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    return TokenSet(
        access_token=access_token.strip(),
        refresh_token=refresh_token.strip() if refresh_token else None,
        expires_in=_expires_in(payload.get("expires_in")),
        scope=scope if isinstance(scope, str) else None,
    )


# One HTTP client per process (connection reuse), created lazily after any fork: Celery's
# prefork workers must not share the parent's sockets.
_client_lock = threading.Lock()
_client: tuple[int, httpx2.Client] | None = None


def _http_client() -> httpx2.Client:
    global _client
    with _client_lock:
        if _client is None or _client[0] != os.getpid():
            _client = (os.getpid(), httpx2.Client(follow_redirects=False))
        return _client[1]


@sensitive_variables()
def _post(integration: Integration, url: str, data: dict[str, str]) -> httpx2.Response:
    """POST a form with client authentication; raises `TokenEndpointError("transient")` when
    no answer comes (connection refused, timeout). The timeout is explicit and short because a
    refresh runs while holding its connection's row lock."""
    form = dict(data)
    options: dict[str, Any] = {
        "timeout": httpx2.Timeout(integration.timeout_seconds, connect=min(5.0, integration.timeout_seconds)),
        "headers": {"Accept": "application/json"},
    }
    if integration.client_auth_method == "client_secret_post":
        form.update(client_id=integration.client_id, client_secret=integration.client_secret)
    else:
        options["auth"] = httpx2.BasicAuth(integration.client_id, integration.client_secret)
    try:
        response = _http_client().post(url, data=form, **options)
    except httpx2.TimeoutException:
        raise TokenEndpointError("transient", "timeout") from None
    except httpx2.HTTPError:
        raise TokenEndpointError("transient", "connection_failed") from None
    except httpx2.InvalidURL:
        raise TokenEndpointError("rejected", "invalid_url") from None
    return response


@sensitive_variables()
def _token_request(integration: Integration, data: dict[str, str]) -> TokenSet:
    response = _post(integration, integration.token_url, data)
    return parse_token_response(response.status_code, response.headers, response.content[:_MAX_BODY_BYTES])


@sensitive_variables()
def exchange_code(integration: Integration, *, code: str, redirect_uri: str, code_verifier: str) -> TokenSet:
    """Authorization-code grant with the PKCE verifier (RFC 6749 4.1.3, RFC 7636 4.5)."""
    return _token_request(
        integration,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        },
    )


@sensitive_variables()
def refresh_grant(integration: Integration, *, refresh_token: str) -> TokenSet:
    """Refresh-token grant (RFC 6749 6). The caller holds the connection's row lock."""
    return _token_request(integration, {"grant_type": "refresh_token", "refresh_token": refresh_token})


@sensitive_variables()
def revoke(integration: Integration, *, token: str, token_type_hint: str) -> bool:
    """RFC 7009 revocation; True when the provider accepted it. Best effort, never raises."""
    if not integration.supports_revocation:
        return False
    try:
        response = _post(integration, integration.revoke_url, {"token": token, "token_type_hint": token_type_hint})
    except TokenEndpointError:
        return False
    return 200 <= response.status_code < 300
