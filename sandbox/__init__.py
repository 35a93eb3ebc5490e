"""Provider sandbox: a loopback stand-in for the Anthropic, OpenAI and OAuth 2 APIs.

Development only: tests, benchmarks and the local dev stack (``python -m sandbox``) point the
official SDKs at it through ``base_url``; production never uses it (the runner refuses
non-loopback hosts). It fakes the outside world, so it imports nothing from Niyra's apps.

Modules: :mod:`~sandbox.behaviour` (the words in a key that choose what happens),
:mod:`~sandbox.replies` (the deterministic replies and token counts), :mod:`~sandbox.schema`
(tool arguments and structured outputs from JSON schemas), :mod:`~sandbox.media` (images, speech
and transcription rules), :mod:`~sandbox.promptcache`, :mod:`~sandbox.anthropic`,
:mod:`~sandbox.openai`, :mod:`~sandbox.responses`, :mod:`~sandbox.audio` and :mod:`~sandbox.oauth`
(the faked servers),
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
from .media import AUDIO_INPUT_TOKENS, IMAGE_TOKENS, TINY_PNG, audio_seconds, speech_audio
from .oauth import CLIENT_SECRET_PREFIX, DEFAULT_ACCESS_TOKEN_TTL, OAuthState, client_secret_for
from .openai import OPENAI_QUOTA_MESSAGE, embedding_for, mask_key
from .replies import (
    MAX_OUTPUT,
    REASONING_TOKENS,
    REPLY_TEXT,
    REPLY_WORDS,
    THINKING_TEXT,
    TOOL_CALL_TOKENS,
    count_words,
    reply_text,
    tool_tokens,
)
from .requestlog import RequestLog, key_id
from .runner import SandboxServer, is_loopback_host
from .schema import sample_for

__all__ = [
    "AUDIO_INPUT_TOKENS",
    "CLIENT_SECRET_PREFIX",
    "CREDIT_BALANCE_MESSAGE",
    "DEFAULT_ACCESS_TOKEN_TTL",
    "FLAG_WORDS",
    "IMAGE_TOKENS",
    "MAX_OUTPUT",
    "NORMAL",
    "OPENAI_QUOTA_MESSAGE",
    "REASONING_TOKENS",
    "REPLY_TEXT",
    "REPLY_WORDS",
    "RETRY_AFTER_SECONDS",
    "THINKING_TEXT",
    "TINY_PNG",
    "TOOL_CALL_TOKENS",
    "Behaviour",
    "OAuthState",
    "RequestLog",
    "SandboxServer",
    "anthropic_key",
    "audio_seconds",
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
    "sample_for",
    "speech_audio",
    "tool_tokens",
]
