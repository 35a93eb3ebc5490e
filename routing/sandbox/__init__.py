"""Provider sandbox: a loopback stand-in for the Anthropic, OpenAI and OAuth 2 APIs.

See :mod:`routing.sandbox.server` for routes, behaviour words and the determinism rules.
Never used in production.
"""

from __future__ import annotations

import secrets

from .runner import SandboxServer, is_loopback_host
from .server import (
    CLIENT_SECRET_PREFIX,
    CREDIT_BALANCE_MESSAGE,
    DEFAULT_ACCESS_TOKEN_TTL,
    FLAG_WORDS,
    MAX_OUTPUT,
    NORMAL,
    OPENAI_QUOTA_MESSAGE,
    REPLY_TEXT,
    REPLY_WORDS,
    RETRY_AFTER_SECONDS,
    Behaviour,
    OAuthState,
    RequestLog,
    build_app,
    client_secret_for,
    count_words,
    embedding_for,
    key_id,
    mask_key,
    parse_behaviour,
    reply_text,
)

__all__ = [
    "CLIENT_SECRET_PREFIX",
    "CREDIT_BALANCE_MESSAGE",
    "DEFAULT_ACCESS_TOKEN_TTL",
    "FLAG_WORDS",
    "MAX_OUTPUT",
    "NORMAL",
    "OPENAI_QUOTA_MESSAGE",
    "REPLY_TEXT",
    "REPLY_WORDS",
    "RETRY_AFTER_SECONDS",
    "Behaviour",
    "OAuthState",
    "RequestLog",
    "SandboxServer",
    "anthropic_key",
    "build_app",
    "client_secret_for",
    "count_words",
    "embedding_for",
    "is_loopback_host",
    "key_id",
    "mask_key",
    "oauth_client_id",
    "openai_key",
    "parse_behaviour",
    "reply_text",
]


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
