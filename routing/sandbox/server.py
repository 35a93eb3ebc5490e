"""Provider sandbox: a loopback stand-in for the Anthropic Messages API, the OpenAI
chat-completions/embeddings API and an OAuth 2 authorization server.

Tests, benchmarks and the local dev stack point the official SDKs at it through
``base_url``; production never uses it (the runner refuses non-loopback hosts).

Routes (relative to the server root)
------------------------------------
* ``POST /anthropic/v1/messages`` (+ ``/v1/messages/count_tokens``, ``GET /v1/models``)
* ``POST /openai/v1/chat/completions``, ``POST /openai/v1/embeddings``, ``GET /openai/v1/models``
* ``GET /oauth/authorize``, ``POST /oauth/token``, ``POST /oauth/revoke``, ``GET /oauth/userinfo``
* ``GET /_sandbox/log`` (JSON list of log records), ``POST /_sandbox/reset``

Authentication
--------------
* Anthropic: ``x-api-key: <key>`` or ``Authorization: Bearer <key>`` (the anthropic 2.x SDK
  sends Bearer). OpenAI: ``Authorization: Bearer <key>``. Any non-empty key is valid unless it
  carries a behaviour word (below).
* OAuth clients need no registration: any ``client_id`` works and its client secret is
  ``"secret-" + client_id`` (HTTP Basic or ``client_id``/``client_secret`` form fields).

Behaviour words
---------------
A word anywhere in the key / client_id, delimited by ``-`` or ``_``
(``sk-ant-api03-ratelimit-XXXX``, ``sk-proj-slow250-abcd``, ``gmail-revoked``):

* API keys: ``invalid`` (401), ``ratelimit`` (429 + ``retry-after: 7``), ``noquota``
  (Anthropic 400 "credit balance is too low" / OpenAI 429 ``insufficient_quota``),
  ``overloaded`` (Anthropic 529 / OpenAI 503), ``error`` (500), ``slow<ms>`` (delay before the
  response), ``slowchunk<ms>`` (delay before each streamed token), ``hang`` (never answers),
  ``malformed`` (200 with a non-JSON body / SSE data), ``cut`` (a stream stops after half the
  output tokens and the connection is closed: no final usage, no ``message_stop`` / ``[DONE]``;
  a non-streaming body stops after half its announced Content-Length), ``cached`` (half of the
  prompt is reported as read from cache). Behaviour errors are checked before body validation.
* OAuth client ids: ``revoked`` (refresh -> 400 ``invalid_grant`` and the grant is revoked),
  ``norotate`` (refresh returns no new refresh token; the old one stays valid), ``noexpiry``
  (no ``expires_in`` in token responses; the server still enforces the TTL), ``ratelimit``
  (429 on the token endpoint), ``down`` (503 on the token endpoint), ``error`` (500 on the
  token endpoint), ``invalid`` (401 ``invalid_client``), ``malformed``, ``slow<ms>``, ``hang``,
  ``ttl<seconds>`` (access-token lifetime).

Determinism (billing tests assert exact figures)
------------------------------------------------
* ``W`` = number of whitespace-separated words across ``system`` and all text content of all
  messages (text blocks, and text inside ``tool_result`` blocks), minimum 1.
* The reply is the first ``M`` words of :data:`REPLY_WORDS` (12 words), ``M = min(max_tokens,
  12)``; OpenAI without a max-tokens parameter -> 12. Truncated replies stop with
  ``max_tokens`` (Anthropic) / ``length`` (OpenAI), otherwise ``end_turn`` / ``stop``.
* Streams send exactly one text delta per output word; the deltas concatenate to the
  non-streaming text.
* Anthropic usage: ``input_tokens = W - C``, ``cache_read_input_tokens = C``,
  ``cache_creation_input_tokens = 0``, ``output_tokens = M`` where ``C = W // 2`` with the
  ``cached`` behaviour and 0 otherwise. As with the real API, ``input_tokens`` excludes cache
  reads, so ``input_tokens + cache_read_input_tokens == W`` always.
* OpenAI usage: ``prompt_tokens = W`` (includes cached tokens, as the real API),
  ``prompt_tokens_details.cached_tokens = C``, ``completion_tokens = M``.
* Embeddings: :func:`embedding_for` (sha256-derived, multiples of 1/128 so float32/base64 is
  exact); ``prompt_tokens`` = sum over inputs of ``max(1, words)``.

Request log
-----------
Every API/OAuth request appends a record (see :class:`RequestLog`). Keys and tokens are only
stored as ``sha256(value)[:16]``; plaintext secrets are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import json
import re
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from aiohttp import web

__all__ = [
    "CLIENT_SECRET_PREFIX",
    "DEFAULT_ACCESS_TOKEN_TTL",
    "NORMAL",
    "REPLY_TEXT",
    "REPLY_WORDS",
    "Behaviour",
    "OAuthState",
    "RequestLog",
    "build_app",
    "client_secret_for",
    "count_words",
    "embedding_for",
    "key_id",
    "mask_key",
    "parse_behaviour",
    "reply_text",
]

# --------------------------------------------------------------------------------------
# Constants and deterministic helpers
# --------------------------------------------------------------------------------------

REPLY_TEXT: Final = "Hello from the Niyra provider sandbox, a deterministic stand-in for real models."
REPLY_WORDS: Final[tuple[str, ...]] = tuple(REPLY_TEXT.split())
MAX_OUTPUT: Final = len(REPLY_WORDS)  # 12
assert MAX_OUTPUT == 12

CLIENT_SECRET_PREFIX: Final = "secret-"  # noqa: S105 - the sandbox's documented fake secret rule
DEFAULT_ACCESS_TOKEN_TTL: Final = 3600
DEFAULT_CODE_TTL: Final = 60.0
RETRY_AFTER_SECONDS: Final = 7
EMBEDDING_DIMS: Final = 8

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_JSON_CT: Final = "application/json"
_SSE_CT: Final = "text/event-stream; charset=utf-8"


def count_words(text: str) -> int:
    """Whitespace-separated words: the sandbox's token count."""
    return len(text.split())


def reply_text(output_tokens: int) -> str:
    """The canned reply for ``output_tokens`` output tokens (words), cycling if needed."""
    n = max(0, output_tokens)
    words = [REPLY_WORDS[i % MAX_OUTPUT] for i in range(n)]
    return " ".join(words)


def key_id(secret: str) -> str:
    """Log-safe identifier of a key or token: ``sha256(secret)[:16]``."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def client_secret_for(client_id: str) -> str:
    """The (only) accepted client secret for ``client_id``: ``"secret-" + client_id``."""
    return CLIENT_SECRET_PREFIX + client_id


def mask_key(key: str) -> str:
    """Mask a key like the OpenAI API does: first few chars + ``****`` + last 4."""
    if len(key) >= 16:
        return f"{key[:8]}****{key[-4:]}"
    if len(key) >= 8:
        return f"{key[:2]}****{key[-2:]}"
    return "****"


def embedding_for(text: str, dimensions: int = EMBEDDING_DIMS) -> list[float]:
    """Deterministic embedding of ``text``: bytes of sha256 chained, mapped to (b-128)/128.

    Every value is a multiple of 1/128, so it survives float32/base64 round trips exactly.
    """
    out: list[float] = []
    seed = text.encode("utf-8", "surrogatepass")
    block = 0
    while len(out) < dimensions:
        digest = hashlib.sha256(seed if block == 0 else seed + block.to_bytes(4, "big")).digest()
        out.extend((b - 128) / 128.0 for b in digest)
        block += 1
    return out[:dimensions]


# --------------------------------------------------------------------------------------
# Behaviours
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the sandbox does for a key / OAuth client (parsed by :func:`parse_behaviour`)."""

    invalid: bool = False
    ratelimit: bool = False
    noquota: bool = False
    overloaded: bool = False
    error: bool = False
    slow_ms: int = 0
    slowchunk_ms: int = 0
    hang: bool = False
    malformed: bool = False
    cut: bool = False
    cached: bool = False
    # OAuth
    revoked: bool = False
    norotate: bool = False
    noexpiry: bool = False
    down: bool = False
    ttl: int | None = None


NORMAL: Final = Behaviour()
FLAG_WORDS: Final = frozenset(
    {
        "invalid",
        "ratelimit",
        "noquota",
        "overloaded",
        "error",
        "hang",
        "malformed",
        "cut",
        "cached",
        "revoked",
        "norotate",
        "noexpiry",
        "down",
    }
)
_SPLIT_RE: Final = re.compile(r"[-_]")
_NUMERIC_RE: Final = re.compile(r"(slowchunk|slow|ttl)(\d{1,9})")
_NUMERIC_FIELDS: Final = {"slow": "slow_ms", "slowchunk": "slowchunk_ms", "ttl": "ttl"}


def parse_behaviour(key: str | None) -> Behaviour:
    """Behaviour words found in ``key`` (split on ``-`` and ``_``); :data:`NORMAL` if none."""
    if not key:
        return NORMAL
    found: dict[str, Any] = {}
    for part in _SPLIT_RE.split(key):
        if part in FLAG_WORDS:
            found[part] = True
        elif part[:3] in ("slo", "ttl"):
            m = _NUMERIC_RE.fullmatch(part)
            if m:
                found[_NUMERIC_FIELDS[m.group(1)]] = int(m.group(2))
    return Behaviour(**found) if found else NORMAL


# --------------------------------------------------------------------------------------
# Request log
# --------------------------------------------------------------------------------------

LOG_FIELDS: Final = (
    "api",
    "path",
    "method",
    "key_id",
    "model",
    "stream",
    "grant_type",
    "client_id",
    "refresh_token_id",
    "status",
    "at",
)


class LogRecord:
    """One request. ``status`` is ``None`` while the request is pending (or never answered)."""

    __slots__ = LOG_FIELDS

    def __init__(
        self,
        api: str,
        path: str,
        method: str,
        key_id: str | None = None,
        model: str | None = None,
        stream: bool | None = None,
        grant_type: str | None = None,
        client_id: str | None = None,
        refresh_token_id: str | None = None,
    ) -> None:
        self.api = api
        self.path = path
        self.method = method
        self.key_id = key_id
        self.model = model
        self.stream = stream
        self.grant_type = grant_type
        self.client_id = client_id
        self.refresh_token_id = refresh_token_id
        self.status: int | None = None
        self.at = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LOG_FIELDS}


class RequestLog:
    """Thread-safe, bounded log of requests; never holds plaintext keys or tokens.

    Records are dicts with keys ``api`` ("anthropic" | "openai" | "oauth"), ``path``,
    ``method``, ``key_id`` (sha256(key)[:16] or None), ``model``, ``stream``, ``grant_type``,
    ``client_id``, ``refresh_token_id`` (sha256(refresh token)[:16] or None), ``status`` (None
    while pending / for requests that were never answered) and ``at`` (epoch seconds).
    """

    def __init__(self, maxlen: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._records: deque[LogRecord] = deque(maxlen=maxlen)

    def add(self, record: LogRecord) -> LogRecord:
        with self._lock:
            self._records.append(record)
        return record

    def records(self) -> list[dict[str, Any]]:
        """A copy of all records, oldest first."""
        with self._lock:
            snapshot = list(self._records)
        return [r.as_dict() for r in snapshot]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        return len(self._records)

    def _snapshot(self) -> list[LogRecord]:
        with self._lock:
            return list(self._records)

    def count(
        self,
        key: str | None = None,
        api: str | None = None,
        path: str | None = None,
        status: int | None = None,
    ) -> int:
        """Number of records matching all given filters.

        ``key`` is the plaintext key (hashed for the lookup); ``path`` matches the full path or
        a suffix of it (``"/v1/messages"`` matches ``"/anthropic/v1/messages"``).
        """
        kid = key_id(key) if key is not None else None
        n = 0
        for r in self._snapshot():
            if kid is not None and r.key_id != kid:
                continue
            if api is not None and r.api != api:
                continue
            if path is not None and not (r.path == path or r.path.endswith(path)):
                continue
            if status is not None and r.status != status:
                continue
            n += 1
        return n

    def count_refresh(self, refresh_token: str) -> int:
        """How many token requests presented this refresh token."""
        rid = key_id(refresh_token)
        return sum(1 for r in self._snapshot() if r.refresh_token_id == rid)


# --------------------------------------------------------------------------------------
# OAuth state
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Grant:
    client_id: str
    scope: str
    revoked: bool = False


@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    expires_at: float
    grant_id: str | None = None  # set once redeemed


@dataclass(slots=True)
class _AccessToken:
    grant_id: str
    expires_at: float


@dataclass(slots=True)
class _RefreshToken:
    grant_id: str
    client_id: str
    rotated: bool = False


class OAuthError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}


@dataclass
class OAuthState:
    """Codes, grants and tokens of the sandbox authorization server (thread-safe).

    ``access_token_ttl`` / ``code_ttl`` are the configured defaults; :meth:`reset` forgets all
    codes and tokens and restores them.
    """

    access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL
    code_ttl: float = DEFAULT_CODE_TTL
    _defaults: tuple[int, float] = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _codes: dict[str, _Code] = field(init=False, default_factory=dict)
    _grants: dict[str, _Grant] = field(init=False, default_factory=dict)
    _access: dict[str, _AccessToken] = field(init=False, default_factory=dict)
    _refresh: dict[str, _RefreshToken] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._defaults = (self.access_token_ttl, self.code_ttl)

    def reset(self) -> None:
        with self._lock:
            self._codes.clear()
            self._grants.clear()
            self._access.clear()
            self._refresh.clear()
            self.access_token_ttl, self.code_ttl = self._defaults

    # -- authorize ---------------------------------------------------------------------

    def issue_code(self, client_id: str, redirect_uri: str, challenge: str, scope: str) -> str:
        code = "sbx_code_" + secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Code(client_id, redirect_uri, challenge, scope, time.monotonic() + self.code_ttl)
        return code

    # -- token -------------------------------------------------------------------------

    def _issue(self, grant_id: str, behaviour: Behaviour, *, with_refresh: bool, scope: str) -> dict[str, Any]:
        ttl = behaviour.ttl if behaviour.ttl is not None else self.access_token_ttl
        access = "sbx_at_" + secrets.token_urlsafe(32)
        self._access[access] = _AccessToken(grant_id, time.monotonic() + ttl)
        out: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        if not behaviour.noexpiry:
            out["expires_in"] = ttl
        if with_refresh:
            refresh = "sbx_rt_" + secrets.token_urlsafe(32)
            self._refresh[refresh] = _RefreshToken(grant_id, self._grants[grant_id].client_id)
            out["refresh_token"] = refresh
        out["scope"] = scope
        return out

    def exchange_code(
        self,
        client_id: str,
        code: str,
        redirect_uri: str,
        verifier: str,
        behaviour: Behaviour,
    ) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            entry = self._codes.get(code)
            if entry is None or entry.client_id != client_id:
                raise OAuthError(400, "invalid_grant", "Invalid authorization code.")
            if entry.grant_id is not None:
                # RFC 6749 4.1.2: a code used twice revokes what it issued.
                grant = self._grants.get(entry.grant_id)
                if grant is not None:
                    grant.revoked = True
                raise OAuthError(400, "invalid_grant", "Authorization code already used.")
            if now > entry.expires_at:
                del self._codes[code]
                raise OAuthError(400, "invalid_grant", "Authorization code expired.")
            if entry.redirect_uri != redirect_uri:
                raise OAuthError(400, "invalid_grant", "redirect_uri does not match.")
            if _s256(verifier) != entry.challenge:
                # A failed PKCE check does not consume the code.
                raise OAuthError(400, "invalid_grant", "PKCE verification failed.")
            grant_id = secrets.token_hex(8)
            self._grants[grant_id] = _Grant(client_id, entry.scope)
            entry.grant_id = grant_id
            return self._issue(grant_id, behaviour, with_refresh=True, scope=entry.scope)

    def refresh(self, client_id: str, refresh_token: str, behaviour: Behaviour) -> dict[str, Any]:
        with self._lock:
            entry = self._refresh.get(refresh_token)
            grant = self._grants.get(entry.grant_id) if entry is not None else None
            if entry is None or grant is None or entry.client_id != client_id:
                raise OAuthError(400, "invalid_grant", "Invalid refresh token.")
            if grant.revoked:
                raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
            if behaviour.revoked:
                grant.revoked = True
                raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
            if entry.rotated:
                # Reuse of a rotated refresh token: assume theft, revoke the whole grant.
                grant.revoked = True
                raise OAuthError(400, "invalid_grant", "Refresh token reuse detected; the grant is revoked.")
            if behaviour.norotate:
                return self._issue(entry.grant_id, behaviour, with_refresh=False, scope=grant.scope)
            entry.rotated = True
            return self._issue(entry.grant_id, behaviour, with_refresh=True, scope=grant.scope)

    def revoke(self, token: str) -> bool:
        """Revoke the grant behind an access or refresh token (RFC 7009)."""
        with self._lock:
            at = self._access.get(token)
            rt = self._refresh.get(token)
            grant_id = at.grant_id if at is not None else rt.grant_id if rt is not None else None
            grant = self._grants.get(grant_id) if grant_id is not None else None
            if grant is None:
                return False
            grant.revoked = True
            return True

    def introspect(self, access_token: str) -> _Grant | None:
        """The live grant behind an unexpired access token, else None."""
        with self._lock:
            at = self._access.get(access_token)
            if at is None or time.monotonic() >= at.expires_at:
                return None
            grant = self._grants.get(at.grant_id)
            if grant is None or grant.revoked:
                return None
            return grant


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


_PKCE_RE: Final = re.compile(r"[A-Za-z0-9\-._~]{43,128}")

# --------------------------------------------------------------------------------------
# Precomputed payloads
# --------------------------------------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


# Deltas for token i (0-based): the word, with a leading space after the first.
_DELTA_TEXT: Final = tuple(w if i == 0 else " " + w for i, w in enumerate(REPLY_WORDS))
_ANTHROPIC_DELTAS: Final = tuple(
    _sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
    )
    for t in _DELTA_TEXT
)
_ANTHROPIC_BLOCK_START: Final = _sse(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
_ANTHROPIC_PING: Final = _sse("ping", {"type": "ping"})
_ANTHROPIC_BLOCK_STOP: Final = _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
_ANTHROPIC_MESSAGE_STOP: Final = _sse("message_stop", {"type": "message_stop"})
_TEXT_JSON: Final = tuple(_dumps(" ".join(REPLY_WORDS[:n])) for n in range(MAX_OUTPUT + 1))
_ROLE: Final = '"role":"assistant",'
_OPENAI_DELTA_JSON: Final = tuple(_dumps(t) for t in _DELTA_TEXT)

_ANTHROPIC_MESSAGE_TMPL: Final = (
    '{"id":"%s","type":"message","role":"assistant","model":%s,'
    '"content":[{"type":"text","text":%s}],"stop_reason":"%s","stop_sequence":null,'
    '"usage":{"input_tokens":%d,"output_tokens":%d,'
    '"cache_read_input_tokens":%d,"cache_creation_input_tokens":0}}'
)
_ANTHROPIC_START_TMPL: Final = (
    'event: message_start\ndata: {"type":"message_start","message":{"id":"%s",'
    '"type":"message","role":"assistant","model":%s,"content":[],"stop_reason":null,'
    '"stop_sequence":null,"usage":{"input_tokens":%d,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":%d,"output_tokens":1}}}\n\n'
)
_ANTHROPIC_DELTA_TMPL: Final = (
    'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"%s",'
    '"stop_sequence":null},"usage":{"input_tokens":%d,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":%d,"output_tokens":%d}}\n\n'
)
_OPENAI_COMPLETION_TMPL: Final = (
    '{"id":"%s","object":"chat.completion","created":%d,"model":%s,'
    '"choices":[{"index":0,"message":{"role":"assistant","content":%s,"refusal":null,'
    '"annotations":[]},"logprobs":null,"finish_reason":"%s"}],'
    '"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    '"prompt_tokens_details":{"cached_tokens":%d,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},'
    '"service_tier":"default","system_fingerprint":"fp_sandbox"}'
)
_OPENAI_USAGE_TMPL: Final = (
    '{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    '"prompt_tokens_details":{"cached_tokens":%d,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)

_MALFORMED_JSON: Final = b'{"id": "sandbox-malformed", "type": "message", "content": [{"type": "te'
_MALFORMED_SSE_ANTHROPIC: Final = b'event: message_start\ndata: {"type": "message_start", "mess\n\n'
_MALFORMED_SSE_OPENAI: Final = b'data: {"id": "chatcmpl-sandbox", "obj\n\n'

ANTHROPIC_MODELS: Final = (
    ("claude-opus-4-8", "Claude Opus 4.8"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
    ("claude-fable-5", "Claude Fable 5"),
)
OPENAI_MODELS: Final = (
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4o",
    "gpt-5",
    "gpt-5-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
_ANTHROPIC_MODELS_BODY: Final = _dumps(
    {
        "data": [
            {"type": "model", "id": i, "display_name": n, "created_at": "2025-01-01T00:00:00Z"}
            for i, n in ANTHROPIC_MODELS
        ],
        "has_more": False,
        "first_id": ANTHROPIC_MODELS[0][0],
        "last_id": ANTHROPIC_MODELS[-1][0],
    }
).encode()
_OPENAI_MODELS_BODY: Final = _dumps(
    {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 1735689600, "owned_by": "openai"} for m in OPENAI_MODELS],
    }
).encode()

# -- error bodies ----------------------------------------------------------------------

CREDIT_BALANCE_MESSAGE: Final = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)
OPENAI_QUOTA_MESSAGE: Final = "You exceeded your current quota, please check your plan and billing details."
_OPENAI_NO_KEY_MESSAGE: Final = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    "a username. You can obtain an API key from https://platform.openai.com/account/api-keys."
)


def _anthropic_error_body(etype: str, message: str) -> bytes:
    return _dumps({"type": "error", "error": {"type": etype, "message": message}}).encode()


def _openai_error_body(message: str, etype: str, code: str | None, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": etype, "param": param, "code": code}}).encode()


_RATE_HEADERS: Final = {"retry-after": str(RETRY_AFTER_SECONDS)}
_A_NO_KEY: Final = _anthropic_error_body("authentication_error", "x-api-key header is required")
_A_INVALID: Final = _anthropic_error_body("authentication_error", "invalid x-api-key")
_A_RATELIMIT: Final = _anthropic_error_body(
    "rate_limit_error",
    "This request would exceed the rate limit for your organization of 50 requests per "
    "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see "
    "the response headers for current usage. Please reduce the prompt length or the maximum "
    "tokens requested, or try again later.",
)
_A_NOQUOTA: Final = _anthropic_error_body("invalid_request_error", CREDIT_BALANCE_MESSAGE)
_A_OVERLOADED: Final = _anthropic_error_body("overloaded_error", "Overloaded")
_A_ERROR: Final = _anthropic_error_body("api_error", "Internal server error")
_A_NOT_FOUND: Final = _anthropic_error_body("not_found_error", "Not Found")

_O_RATELIMIT: Final = _openai_error_body(
    "Rate limit reached for requests in organization org-sandbox on requests per min (RPM): "
    f"Limit 3, Used 3, Requested 1. Please try again in {RETRY_AFTER_SECONDS}s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more.",
    "requests",
    "rate_limit_exceeded",
)
_O_NOQUOTA: Final = _openai_error_body(OPENAI_QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota")
_O_OVERLOADED: Final = _openai_error_body(
    "The engine is currently overloaded, please try again later.", "server_error", None
)
_O_ERROR: Final = _openai_error_body(
    "The server had an error while processing your request. Sorry about that!",
    "server_error",
    None,
)
_O_NO_KEY: Final = _openai_error_body(_OPENAI_NO_KEY_MESSAGE, "invalid_request_error", None)


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    hdrs = {"Content-Type": _JSON_CT}
    if headers:
        hdrs.update(headers)
    return web.Response(body=body, status=status, headers=hdrs)


# --------------------------------------------------------------------------------------
# Body validation / word counting
# --------------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _anthropic_blocks_words(content: Any, where: str) -> int:
    if isinstance(content, str):
        return len(content.split())
    if not isinstance(content, list):
        raise _Invalid(f"{where}: Input should be a valid string or a list of content blocks")
    words = 0
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _Invalid(f"{where}.{j}: Input should be a content block with a 'type'")
        btype = block["type"]
        if btype == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _Invalid(f"{where}.{j}.text: Field required")
            words += len(text.split())
        elif btype == "tool_result" and "content" in block:
            words += _anthropic_blocks_words(block["content"], f"{where}.{j}.content")
    return words


def _anthropic_validate(body: Any) -> tuple[int, int]:
    """(prompt words W >= 1, max_tokens) or raise _Invalid."""
    if not isinstance(body, dict):
        raise _Invalid("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise _Invalid("model: Field required")
    if not isinstance(model, str) or not model:
        raise _Invalid("model: Input should be a valid string")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _Invalid("max_tokens: Field required")
    if type(max_tokens) is not int:
        raise _Invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if messages is None:
        raise _Invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    words = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _Invalid(f"messages.{i}: Input should be a valid dictionary")
        if msg.get("role") not in ("user", "assistant"):
            raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in msg:
            raise _Invalid(f"messages.{i}.content: Field required")
        words += _anthropic_blocks_words(msg["content"], f"messages.{i}.content")
    system = body.get("system")
    if system is not None:
        words += _anthropic_blocks_words(system, "system")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _Invalid("stream: Input should be a valid boolean")
    return max(words, 1), max_tokens


_OPENAI_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _openai_positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise _Invalid(
            f"Invalid type for '{name}': expected an integer, but got {type(value).__name__}.",
            name,
            "invalid_type",
        )
    if value < 1:
        raise _Invalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    return value


def _openai_chat_validate(body: Any) -> tuple[int, int | None, bool, bool]:
    """(prompt words W >= 1, max tokens or None, stream, include_usage) or raise _Invalid."""
    if not isinstance(body, dict):
        raise _Invalid("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise _Invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _Invalid("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    if not messages:
        raise _Invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    words = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _OPENAI_ROLES:
            raise _Invalid(f"Invalid value for 'messages[{i}].role'.", f"messages.[{i}].role", "invalid_value")
        content = msg.get("content")
        if content is None or isinstance(content, str):
            words += len(content.split()) if content else 0
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        words += len(text.split())
        else:
            raise _Invalid(
                f"Invalid type for 'messages[{i}].content'.",
                f"messages.[{i}].content",
                "invalid_type",
            )
    max_tokens = _openai_positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _openai_positive_int(body, "max_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _Invalid("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _Invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        if isinstance(options, dict):
            include_usage = options.get("include_usage") is True
    return max(words, 1), max_tokens, bool(stream), include_usage


# --------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
        return token or None
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def _hang(request: web.Request) -> None:
    """Never answer; return once the client has gone away (or be cancelled)."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise asyncio.CancelledError
        await asyncio.sleep(0.1)


async def _cut_connection(request: web.Request) -> None:
    """Close the connection without finishing the body (incomplete chunked/content-length)."""
    transport = request.transport
    if transport is not None:
        transport.close()


class SandboxApp:
    """Handlers bound to one request log and one OAuth state."""

    def __init__(self, log: RequestLog, oauth: OAuthState) -> None:
        self.log = log
        self.oauth = oauth
        self._ids = itertools.count(1)

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):020d}"

    @staticmethod
    async def _delay(request: web.Request, behaviour: Behaviour) -> None:
        if behaviour.hang:
            await _hang(request)
        if behaviour.slow_ms:
            await asyncio.sleep(behaviour.slow_ms / 1000)

    @staticmethod
    def _finish(record: LogRecord, response: web.StreamResponse) -> web.StreamResponse:
        record.status = response.status
        return response

    @staticmethod
    async def _read_json(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError:
            return None

    # -- Anthropic ---------------------------------------------------------------------

    def _anthropic_headers(self) -> dict[str, str]:
        return {"Content-Type": _JSON_CT, "request-id": self._next_id("req_01")}

    def _anthropic_behaviour_error(self, b: Behaviour) -> web.Response | None:
        if b.invalid:
            return _json(_A_INVALID, 401)
        if b.ratelimit:
            return _json(
                _A_RATELIMIT,
                429,
                {
                    **_RATE_HEADERS,
                    "anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "0",
                },
            )
        if b.noquota:
            return _json(_A_NOQUOTA, 400)
        if b.overloaded:
            return _json(_A_OVERLOADED, 529)
        if b.error:
            return _json(_A_ERROR, 500)
        return None

    async def _anthropic_prologue(
        self, request: web.Request, body: Any
    ) -> tuple[LogRecord, Behaviour, web.Response | None]:
        key = request.headers.get("x-api-key") or _bearer(request)
        is_dict = isinstance(body, dict)
        record = self.log.add(
            LogRecord(
                "anthropic",
                request.path,
                request.method,
                key_id(key) if key else None,
                _str_or_none(body.get("model")) if is_dict else None,
                (body.get("stream") is True) if is_dict else None,
            )
        )
        if not key:
            return record, NORMAL, _json(_A_NO_KEY, 401)
        behaviour = parse_behaviour(key)
        if behaviour is not NORMAL:
            await self._delay(request, behaviour)
            return record, behaviour, self._anthropic_behaviour_error(behaviour)
        return record, behaviour, None

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        record, b, early = await self._anthropic_prologue(request, body)
        if early is not None:
            return self._finish(record, early)
        try:
            words, max_tokens = _anthropic_validate(body)
        except _Invalid as exc:
            return self._finish(
                record,
                _json(_anthropic_error_body("invalid_request_error", exc.message), 400),
            )
        out = min(max_tokens, MAX_OUTPUT)
        stop_reason = "max_tokens" if max_tokens < MAX_OUTPUT else "end_turn"
        cached = words // 2 if b.cached else 0
        fresh = words - cached
        model_json = _dumps(body["model"])
        msg_id = self._next_id("msg_01")
        headers = self._anthropic_headers()

        if not body.get("stream"):
            if b.malformed:
                return self._finish(record, _json(_MALFORMED_JSON))
            payload = (
                _ANTHROPIC_MESSAGE_TMPL % (msg_id, model_json, _TEXT_JSON[out], stop_reason, fresh, out, cached)
            ).encode()
            if b.cut:
                return self._finish(record, await self._cut_body(request, payload, headers))
            return self._finish(record, web.Response(body=payload, headers=headers))

        headers["Content-Type"] = _SSE_CT
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(headers=headers)
        record.status = 200
        await resp.prepare(request)
        if b.malformed:
            await resp.write(_MALFORMED_SSE_ANTHROPIC)
            await resp.write_eof()
            return resp
        head = (_ANTHROPIC_START_TMPL % (msg_id, model_json, fresh, cached)).encode()
        head += _ANTHROPIC_BLOCK_START + _ANTHROPIC_PING
        sent = out // 2 if b.cut else out
        if b.slowchunk_ms:
            await resp.write(head)
            for chunk in _ANTHROPIC_DELTAS[:sent]:
                await asyncio.sleep(b.slowchunk_ms / 1000)
                await resp.write(chunk)
            tail = b""
        else:
            tail = head + b"".join(_ANTHROPIC_DELTAS[:sent])
        if b.cut:
            if tail:
                await resp.write(tail)
            await _cut_connection(request)
            return resp
        tail += (
            _ANTHROPIC_BLOCK_STOP
            + (_ANTHROPIC_DELTA_TMPL % (stop_reason, fresh, cached, out)).encode()
            + _ANTHROPIC_MESSAGE_STOP
        )
        await resp.write(tail)
        await resp.write_eof()
        return resp

    async def anthropic_count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        record, _b, early = await self._anthropic_prologue(request, body)
        if early is not None:
            return self._finish(record, early)
        if isinstance(body, dict):
            body = {**body, "max_tokens": 1}
        try:
            words, _max = _anthropic_validate(body)
        except _Invalid as exc:
            return self._finish(
                record,
                _json(_anthropic_error_body("invalid_request_error", exc.message), 400),
            )
        return self._finish(record, _json(_dumps({"input_tokens": words}).encode()))

    async def anthropic_models(self, request: web.Request) -> web.StreamResponse:
        record, _b, early = await self._anthropic_prologue(request, None)
        if early is not None:
            return self._finish(record, early)
        return self._finish(record, _json(_ANTHROPIC_MODELS_BODY))

    async def anthropic_not_found(self, request: web.Request) -> web.StreamResponse:
        return _json(_A_NOT_FOUND, 404)

    async def _cut_body(self, request: web.Request, payload: bytes, headers: dict[str, str]) -> web.StreamResponse:
        """Announce the full Content-Length, send half of the body, drop the connection."""
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        await _cut_connection(request)
        return resp

    # -- OpenAI ------------------------------------------------------------------------

    async def _openai_prologue(
        self, request: web.Request, body: Any
    ) -> tuple[LogRecord, Behaviour, web.Response | None]:
        key = _bearer(request)
        is_dict = isinstance(body, dict)
        record = self.log.add(
            LogRecord(
                "openai",
                request.path,
                request.method,
                key_id(key) if key else None,
                _str_or_none(body.get("model")) if is_dict else None,
                (body.get("stream") is True) if is_dict else None,
            )
        )
        if not key:
            return record, NORMAL, _json(_O_NO_KEY, 401)
        b = parse_behaviour(key)
        if b is NORMAL:
            return record, b, None
        await self._delay(request, b)
        if b.invalid:
            message = (
                f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            return (
                record,
                b,
                _json(_openai_error_body(message, "invalid_request_error", "invalid_api_key"), 401),
            )
        if b.ratelimit:
            return (
                record,
                b,
                _json(
                    _O_RATELIMIT,
                    429,
                    {
                        **_RATE_HEADERS,
                        "x-ratelimit-limit-requests": "3",
                        "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": f"{RETRY_AFTER_SECONDS}s",
                    },
                ),
            )
        if b.noquota:
            return record, b, _json(_O_NOQUOTA, 429)
        if b.overloaded:
            return record, b, _json(_O_OVERLOADED, 503)
        if b.error:
            return record, b, _json(_O_ERROR, 500)
        return record, b, None

    @staticmethod
    def _openai_invalid(exc: _Invalid) -> web.Response:
        return _json(_openai_error_body(exc.message, "invalid_request_error", exc.code, exc.param), 400)

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        record, b, early = await self._openai_prologue(request, body)
        if early is not None:
            return self._finish(record, early)
        try:
            words, max_tokens, stream, include_usage = _openai_chat_validate(body)
        except _Invalid as exc:
            return self._finish(record, self._openai_invalid(exc))
        out = MAX_OUTPUT if max_tokens is None else min(max_tokens, MAX_OUTPUT)
        finish = "length" if max_tokens is not None and max_tokens < MAX_OUTPUT else "stop"
        cached = words // 2 if b.cached else 0
        model_json = _dumps(body["model"])
        cid = self._next_id("chatcmpl-sbx")
        created = int(time.time())
        headers = {"Content-Type": _JSON_CT, "x-request-id": self._next_id("req_")}

        if not stream:
            if b.malformed:
                return self._finish(record, _json(_MALFORMED_JSON))
            payload = (
                _OPENAI_COMPLETION_TMPL
                % (
                    cid,
                    created,
                    model_json,
                    _TEXT_JSON[out],
                    finish,
                    words,
                    out,
                    words + out,
                    cached,
                )
            ).encode()
            if b.cut:
                return self._finish(record, await self._cut_body(request, payload, headers))
            return self._finish(record, web.Response(body=payload, headers=headers))

        headers["Content-Type"] = _SSE_CT
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(headers=headers)
        record.status = 200
        await resp.prepare(request)
        if b.malformed:
            await resp.write(_MALFORMED_SSE_OPENAI)
            await resp.write_eof()
            return resp
        usage_null = ',"usage":null' if include_usage else ""
        prefix = (
            f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
            f'"model":{model_json},"service_tier":"default","system_fingerprint":"fp_sandbox",'
            '"choices":'
        )
        chunks = [
            (
                f'{prefix}[{{"index":0,"delta":{{{_ROLE if i == 0 else ""}"content":{_OPENAI_DELTA_JSON[i]}}},'
                f'"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n'
            ).encode()
            for i in range(out)
        ]
        sent = out // 2 if b.cut else out
        if b.slowchunk_ms:
            for chunk in chunks[:sent]:
                await asyncio.sleep(b.slowchunk_ms / 1000)
                await resp.write(chunk)
            tail = b""
        else:
            tail = b"".join(chunks[:sent])
        if b.cut:
            if tail:
                await resp.write(tail)
            await _cut_connection(request)
            return resp
        tail += (
            f'{prefix}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish}"}}]{usage_null}}}\n\n'
        ).encode()
        if include_usage:
            usage = _OPENAI_USAGE_TMPL % (words, out, words + out, cached)
            tail += f'{prefix}[],"usage":{usage}}}\n\n'.encode()
        tail += b"data: [DONE]\n\n"
        await resp.write(tail)
        await resp.write_eof()
        return resp

    async def openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        record, b, early = await self._openai_prologue(request, body)
        if early is not None:
            return self._finish(record, early)
        try:
            texts, model, fmt, dims = _embeddings_validate(body)
        except _Invalid as exc:
            return self._finish(record, self._openai_invalid(exc))
        if b.malformed:
            return self._finish(record, _json(_MALFORMED_JSON))
        data: list[dict[str, Any]] = []
        tokens = 0
        for i, (text, words) in enumerate(texts):
            tokens += words
            vector = embedding_for(text, dims)
            emb: Any = vector
            if fmt == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": emb})
        payload = _dumps(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        ).encode()
        return self._finish(record, _json(payload))

    async def openai_models(self, request: web.Request) -> web.StreamResponse:
        record, _b, early = await self._openai_prologue(request, None)
        if early is not None:
            return self._finish(record, early)
        return self._finish(record, _json(_OPENAI_MODELS_BODY))

    async def openai_not_found(self, request: web.Request) -> web.StreamResponse:
        return _json(
            _openai_error_body(f"Invalid URL ({request.method} {request.path})", "invalid_request_error", None),
            404,
        )

    # -- OAuth -------------------------------------------------------------------------

    @staticmethod
    def _oauth_error(exc: OAuthError) -> web.Response:
        payload = _dumps({"error": exc.error, "error_description": exc.description}).encode()
        return _json(payload, exc.status, {"Cache-Control": "no-store", **exc.headers})

    async def oauth_authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        client_id = q.get("client_id") or None
        record = self.log.add(LogRecord("oauth", request.path, request.method, client_id=client_id))
        try:
            if not client_id:
                raise OAuthError(400, "invalid_request", "Missing client_id.")
            b = parse_behaviour(client_id)
            await self._delay(request, b)
            redirect_uri = q.get("redirect_uri", "")
            parts = urlsplit(redirect_uri)
            if not parts.scheme or not (parts.netloc or parts.path) or parts.fragment:
                raise OAuthError(400, "invalid_request", "Missing or invalid redirect_uri.")
            response_type = q.get("response_type")
            if response_type is None:
                raise OAuthError(400, "invalid_request", "Missing response_type.")
            if response_type != "code":
                raise OAuthError(400, "unsupported_response_type", "Only response_type=code is supported.")
            challenge = q.get("code_challenge", "")
            if not _PKCE_RE.fullmatch(challenge):
                raise OAuthError(400, "invalid_request", "Missing or invalid code_challenge (PKCE required).")
            if q.get("code_challenge_method") != "S256":
                raise OAuthError(400, "invalid_request", "code_challenge_method must be S256.")
        except OAuthError as exc:
            return self._finish(record, self._oauth_error(exc))
        code = self.oauth.issue_code(client_id, redirect_uri, challenge, q.get("scope", ""))
        params = [("code", code)]
        if "state" in q:
            params.append(("state", q["state"]))
        query = urlencode(parse_qsl(parts.query, keep_blank_values=True) + params)
        location = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
        return self._finish(record, web.Response(status=302, headers={"Location": location}))

    @staticmethod
    def _client_credentials(request: web.Request, form: Any) -> tuple[str | None, str | None, bool]:
        """(client_id, client_secret, used_basic)."""
        auth = request.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None, None, True
            cid, sep, secret = decoded.partition(":")
            if not sep:
                return None, None, True
            return unquote_plus(cid), unquote_plus(secret), True
        return _str_or_none(form.get("client_id")), _str_or_none(form.get("client_secret")), False

    async def oauth_token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client_id, secret, used_basic = self._client_credentials(request, form)
        grant_type = _str_or_none(form.get("grant_type"))
        refresh_token = _str_or_none(form.get("refresh_token"))
        record = self.log.add(
            LogRecord(
                "oauth",
                request.path,
                request.method,
                grant_type=grant_type,
                client_id=client_id,
                refresh_token_id=(key_id(refresh_token) if refresh_token and grant_type == "refresh_token" else None),
            )
        )
        b = parse_behaviour(client_id)
        try:
            await self._delay(request, b)
            if b.down:
                raise OAuthError(
                    503,
                    "temporarily_unavailable",
                    "The authorization server is temporarily unavailable.",
                )
            if b.error:
                raise OAuthError(500, "server_error", "Internal server error.")
            if b.ratelimit:
                raise OAuthError(
                    429,
                    "rate_limit_exceeded",
                    f"Too many requests; retry after {RETRY_AFTER_SECONDS} seconds.",
                    dict(_RATE_HEADERS),
                )
            if not client_id or b.invalid or secret != client_secret_for(client_id):
                raise OAuthError(
                    401,
                    "invalid_client",
                    "Client authentication failed.",
                    {"WWW-Authenticate": 'Basic realm="sandbox"'} if used_basic else None,
                )
            if b.malformed:
                return self._finish(record, _json(_MALFORMED_JSON))
            if grant_type is None:
                raise OAuthError(400, "invalid_request", "Missing grant_type.")
            if grant_type == "authorization_code":
                code = _str_or_none(form.get("code"))
                redirect_uri = _str_or_none(form.get("redirect_uri"))
                verifier = _str_or_none(form.get("code_verifier"))
                if not code or not redirect_uri or not verifier:
                    raise OAuthError(400, "invalid_request", "code, redirect_uri and code_verifier are required.")
                tokens = self.oauth.exchange_code(client_id, code, redirect_uri, verifier, b)
            elif grant_type == "refresh_token":
                if not refresh_token:
                    raise OAuthError(400, "invalid_request", "Missing refresh_token.")
                tokens = self.oauth.refresh(client_id, refresh_token, b)
            else:
                raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type.")
        except OAuthError as exc:
            return self._finish(record, self._oauth_error(exc))
        return self._finish(
            record,
            _json(_dumps(tokens).encode(), 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}),
        )

    async def oauth_revoke(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client_id, _secret, _basic = self._client_credentials(request, form)
        record = self.log.add(LogRecord("oauth", request.path, request.method, client_id=client_id))
        token = _str_or_none(form.get("token"))
        if token:
            self.oauth.revoke(token)
        return self._finish(record, web.Response(status=200))

    async def oauth_userinfo(self, request: web.Request) -> web.StreamResponse:
        token = _bearer(request)
        record = self.log.add(LogRecord("oauth", request.path, request.method, key_id(token) if token else None))
        grant = self.oauth.introspect(token) if token else None
        if grant is None:
            resp = _json(
                _dumps(
                    {
                        "error": "invalid_token",
                        "error_description": "The access token is missing, expired or revoked.",
                    }
                ).encode(),
                401,
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
            return self._finish(record, resp)
        record.client_id = grant.client_id
        payload = _dumps(
            {
                "sub": f"sandbox-user-{grant.client_id}",
                "email": "user@sandbox.invalid",
                "client_id": grant.client_id,
                "scope": grant.scope,
            }
        ).encode()
        return self._finish(record, _json(payload))

    # -- control -----------------------------------------------------------------------

    async def sandbox_log(self, request: web.Request) -> web.StreamResponse:
        return _json(_dumps(self.log.records()).encode())

    async def sandbox_reset(self, request: web.Request) -> web.StreamResponse:
        self.log.clear()
        self.oauth.reset()
        return _json(b'{"ok":true}')


def _embeddings_validate(body: Any) -> tuple[list[tuple[str, int]], str, str, int]:
    """([(text, tokens)], model, encoding_format, dimensions) or raise _Invalid."""
    if not isinstance(body, dict):
        raise _Invalid("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("you must provide a model parameter")
    raw = body.get("input")
    if raw is None:
        raise _Invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    items: Iterable[Any]
    if isinstance(raw, str):
        items = [raw]
    elif isinstance(raw, list) and raw and all(type(t) is int for t in raw):
        items = [raw]  # one pre-tokenised input
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise _Invalid("'$.input' is invalid. Please check the API reference.", "input", None)
    texts: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str) and item:
            texts.append((item, max(1, len(item.split()))))
        elif isinstance(item, list) and item and all(type(t) is int for t in item):
            texts.append((_dumps(item), len(item)))
        else:
            raise _Invalid("'$.input' is invalid. Please check the API reference.", "input", None)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _Invalid(
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    dims = body.get("dimensions", EMBEDDING_DIMS)
    if type(dims) is not int or not 1 <= dims <= 4096:
        raise _Invalid("Invalid 'dimensions'.", "dimensions", "invalid_value")
    return texts, model, fmt, dims


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SANDBOX_KEY: Final = web.AppKey("sandbox", SandboxApp)


def build_app(
    log: RequestLog | None = None,
    oauth: OAuthState | None = None,
    *,
    access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL,
    code_ttl: float = DEFAULT_CODE_TTL,
) -> web.Application:
    """The sandbox aiohttp application (log and OAuth state are created if not given)."""
    sandbox = SandboxApp(
        log if log is not None else RequestLog(),
        oauth if oauth is not None else OAuthState(access_token_ttl, code_ttl),
    )
    app = web.Application(client_max_size=32 * 1024 * 1024)
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/anthropic/v1/messages", sandbox.anthropic_messages),
        ("POST", "/anthropic/v1/messages/count_tokens", sandbox.anthropic_count_tokens),
        ("GET", "/anthropic/v1/models", sandbox.anthropic_models),
        ("POST", "/openai/v1/chat/completions", sandbox.openai_chat),
        ("POST", "/openai/v1/embeddings", sandbox.openai_embeddings),
        ("GET", "/openai/v1/models", sandbox.openai_models),
        ("GET", "/oauth/authorize", sandbox.oauth_authorize),
        ("POST", "/oauth/token", sandbox.oauth_token),
        ("POST", "/oauth/revoke", sandbox.oauth_revoke),
        ("GET", "/oauth/userinfo", sandbox.oauth_userinfo),
        ("GET", "/_sandbox/log", sandbox.sandbox_log),
        ("POST", "/_sandbox/reset", sandbox.sandbox_reset),
        ("*", "/anthropic/{tail:.*}", sandbox.anthropic_not_found),
        ("*", "/openai/{tail:.*}", sandbox.openai_not_found),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    app[SANDBOX_KEY] = sandbox
    return app
