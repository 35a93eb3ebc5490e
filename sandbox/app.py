"""The sandbox's aiohttp application: every provider's routes, plus the log and reset controls.

Routes (relative to the server root)
------------------------------------
* ``POST /anthropic/v1/messages`` (+ ``/v1/messages/count_tokens``, ``GET /v1/models``,
  ``GET /v1/models/{id}``)
* ``POST /openai/v1/chat/completions``, ``/responses``, ``/embeddings``, ``/audio/speech``,
  ``/audio/transcriptions``; ``GET /openai/v1/models``, ``/models/{id}``
* ``GET /oauth/authorize``, ``POST /oauth/token``, ``POST /oauth/revoke``, ``GET /oauth/userinfo``
* ``GET /_sandbox/log`` (JSON list of log records), ``POST /_sandbox/reset``
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .anthropic import AnthropicAPI
from .audio import AudioAPI
from .oauth import DEFAULT_ACCESS_TOKEN_TTL, DEFAULT_CODE_TTL, OAuthServer, OAuthState
from .openai import OpenAIAPI
from .promptcache import PromptCache
from .requestlog import RequestLog
from .responses import ResponsesAPI
from .wire import Ids, dumps, json_response

__all__ = ["build_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(
    log: RequestLog | None = None,
    oauth: OAuthState | None = None,
    *,
    access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL,
    code_ttl: float = DEFAULT_CODE_TTL,
    cache: PromptCache | None = None,
) -> web.Application:
    """The sandbox aiohttp application (log, OAuth state and prompt cache are created if not given)."""
    log = log if log is not None else RequestLog()
    state = oauth if oauth is not None else OAuthState(access_token_ttl, code_ttl)
    prompts = cache if cache is not None else PromptCache()
    ids = Ids()
    claude = AnthropicAPI(log, ids, prompts)
    gpt = OpenAIAPI(log, ids, prompts)
    responses = ResponsesAPI(gpt)
    audio = AudioAPI(gpt)
    auth = OAuthServer(log, state)

    async def sandbox_log(request: web.Request) -> web.StreamResponse:
        return json_response(dumps(log.records(deep=False)).encode())

    async def sandbox_reset(request: web.Request) -> web.StreamResponse:
        log.clear()
        state.reset()
        prompts.clear()
        return json_response(b'{"ok":true}')

    app = web.Application(client_max_size=32 * 1024 * 1024)
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/anthropic/v1/messages", claude.messages),
        ("POST", "/anthropic/v1/messages/count_tokens", claude.count_tokens),
        ("GET", "/anthropic/v1/models", claude.models),
        ("GET", "/anthropic/v1/models/{model_id}", claude.model),
        ("POST", "/openai/v1/chat/completions", gpt.chat),
        ("POST", "/openai/v1/responses", responses.create),
        ("POST", "/openai/v1/embeddings", gpt.embeddings),
        ("POST", "/openai/v1/audio/speech", audio.speech),
        ("POST", "/openai/v1/audio/transcriptions", audio.transcriptions),
        ("GET", "/openai/v1/models", gpt.models),
        ("GET", "/openai/v1/models/{model_id}", gpt.model),
        ("GET", "/oauth/authorize", auth.authorize),
        ("POST", "/oauth/token", auth.token),
        ("POST", "/oauth/revoke", auth.revoke),
        ("GET", "/oauth/userinfo", auth.userinfo),
        ("GET", "/_sandbox/log", sandbox_log),
        ("POST", "/_sandbox/reset", sandbox_reset),
        ("*", "/anthropic/{tail:.*}", claude.not_found),
        ("*", "/openai/{tail:.*}", gpt.not_found),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return app
