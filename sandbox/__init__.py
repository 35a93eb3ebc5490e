"""Provider sandbox: a loopback stand-in for the Anthropic, OpenAI and OAuth 2 APIs.

Development only: tests, benchmarks and the local dev stack (``python -m sandbox``) point the
official SDKs at it through ``base_url``; production never uses it (the runner refuses
non-loopback hosts). It fakes the outside world, so it imports nothing from Niyra's apps.

Modules: :mod:`~sandbox.behaviour` (the words in a key that choose what happens),
:mod:`~sandbox.replies` (the deterministic replies and token counts), :mod:`~sandbox.anthropic`,
:mod:`~sandbox.openai` and :mod:`~sandbox.oauth` (one per faked server),
:mod:`~sandbox.requestlog`, :mod:`~sandbox.wire` (HTTP/SSE plumbing they share),
:mod:`~sandbox.app` (the routes), :mod:`~sandbox.runner` (the server thread / foreground
process) and :mod:`~sandbox.pytest_plugin` (the ``sandbox`` fixture).
"""

from __future__ import annotations

from .anthropic import CREDIT_BALANCE_MESSAGE
from .app import build_app
from .behaviour import (
    FLAG_WORDS,
    NORMAL,
    RETRY_AFTER_SECONDS,
    Behaviour,
    anthropic_key,
    oauth_client_id,
    openai_key,
    parse_behaviour,
)
from .oauth import CLIENT_SECRET_PREFIX, DEFAULT_ACCESS_TOKEN_TTL, OAuthState, client_secret_for
from .openai import OPENAI_QUOTA_MESSAGE, embedding_for, mask_key
from .replies import MAX_OUTPUT, REPLY_TEXT, REPLY_WORDS, count_words, reply_text
from .requestlog import RequestLog, key_id
from .runner import SandboxServer, is_loopback_host

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
