"""Behaviour words: what the sandbox does for a key or an OAuth client id.

A word anywhere in the key / client_id, delimited by ``-`` or ``_``
(``sk-ant-api03-ratelimit-XXXX``, ``sk-proj-slow250-abcd``, ``gmail-revoked``), selects it.

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
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "FLAG_WORDS",
    "NORMAL",
    "RETRY_AFTER_SECONDS",
    "ApiError",
    "Behaviour",
    "anthropic_key",
    "oauth_client_id",
    "openai_key",
    "parse_behaviour",
]

RETRY_AFTER_SECONDS: Final = 7

ApiError = Literal["invalid", "ratelimit", "noquota", "overloaded", "error"]


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

    def api_error(self) -> ApiError | None:
        """The error word an API answers with, by precedence; each provider gives it its shape."""
        if self.invalid:
            return "invalid"
        if self.ratelimit:
            return "ratelimit"
        if self.noquota:
            return "noquota"
        if self.overloaded:
            return "overloaded"
        if self.error:
            return "error"
        return None


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


def _key(prefix: str, words: tuple[str, ...]) -> str:
    middle = "".join(f"{w}-" for w in words)
    return f"{prefix}{middle}{secrets.token_hex(16)}"


def anthropic_key(*words: str) -> str:
    """A fresh Anthropic-looking key carrying behaviour ``words``: ``sk-ant-api03-<words>-<hex>``."""
    return _key("sk-ant-api03-", words)


def openai_key(*words: str) -> str:
    """A fresh OpenAI-looking key carrying behaviour ``words``: ``sk-proj-<words>-<hex>``."""
    return _key("sk-proj-", words)


def oauth_client_id(*words: str, name: str = "client") -> str:
    """A fresh OAuth client id carrying behaviour ``words``; its secret is ``"secret-" + id``."""
    return "-".join((name, *words, secrets.token_hex(4)))
