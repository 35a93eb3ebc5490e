"""The upstream call: one pooled aiohttp session per event loop, shared by every routed call.

aiohttp's client is the fastest well-kept async client measured for this job
(`benchmarks/upstream_clients.py`); the official SDKs stay for key validation and as the
clients in the tests. The session keeps connections to each provider warm; the key travels only
in the headers of the request that uses it, never in the shared session. No retries: a 429
would have the caller wait, a retried 5xx doubles a failure, and on BYOK a retry spends the
user's own limits. Errors come back at once; clients retry.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from providers import Provider

_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()

# Headers a client sends that reach the provider with its request (the credential is Niyra's).
FORWARDED_REQUEST_HEADERS: Mapping[Provider, frozenset[str]] = {
    Provider.ANTHROPIC: frozenset({"anthropic-version", "anthropic-beta", "idempotency-key"}),
    Provider.OPENAI: frozenset({"openai-beta", "idempotency-key"}),
}
# Only on the user's own key: these name an organisation or project of the key's owner.
FORWARDED_BYOK_HEADERS: Mapping[Provider, frozenset[str]] = {
    Provider.ANTHROPIC: frozenset(),
    Provider.OPENAI: frozenset({"openai-organization", "openai-project"}),
}
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Headers of the provider's answer that go back to the client.
RELAYED_RESPONSE_HEADERS = ("content-type", "request-id", "x-request-id", "openai-processing-ms", "retry-after")


def base_url(provider: Provider) -> str:
    """The provider's API root, ending in `/v1` (the sandbox's in development and tests)."""
    if provider == Provider.ANTHROPIC:
        root = settings.ANTHROPIC_BASE_URL or "https://api.anthropic.com"
        return f"{root.rstrip('/')}/v1"
    root = settings.OPENAI_BASE_URL or "https://api.openai.com/v1"
    return root.rstrip("/")


def platform_key(provider: Provider) -> str:
    return str(settings.ANTHROPIC_API_KEY if provider == Provider.ANTHROPIC else settings.OPENAI_API_KEY)


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    current = _SESSIONS.get(loop)
    if current is None or current.closed:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
        current = aiohttp.ClientSession(
            connector=connector,
            # The API's bytes, relayed as they come: no cookies, no redirects, raw JSON.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        _SESSIONS[loop] = current
    return current


def session_open() -> bool:
    """Whether this event loop has a session already."""
    current = _SESSIONS.get(asyncio.get_running_loop())
    return current is not None and not current.closed


async def session_close() -> None:
    """Close this loop's session (ASGI lifespan shutdown)."""
    current = _SESSIONS.pop(asyncio.get_running_loop(), None)
    if current is not None:
        await current.close()


@sensitive_variables("api_key")
def request_headers(
    provider: Provider, *, api_key: str, client_headers: Mapping[str, str], content_type: str, byok: bool
) -> dict[str, str]:
    forwarded = FORWARDED_REQUEST_HEADERS[provider] | (FORWARDED_BYOK_HEADERS[provider] if byok else frozenset())
    headers = {name: value for name, value in client_headers.items() if name in forwarded}
    headers["content-type"] = content_type
    headers["user-agent"] = "niyra-gateway"
    if provider == Provider.ANTHROPIC:
        headers["x-api-key"] = api_key
        headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
    else:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


@dataclass(slots=True)
class Upstream:
    """An answer being received: status and headers are known, the body is still to be read."""

    response: aiohttp.ClientResponse

    @property
    def status(self) -> int:
        return self.response.status

    def relayed_headers(self) -> list[tuple[bytes, bytes]]:
        headers = self.response.headers
        return [
            (name.encode(), headers[name].encode("latin-1")) for name in RELAYED_RESPONSE_HEADERS if name in headers
        ]

    async def read(self) -> bytes:
        try:
            return await self.response.read()
        except RuntimeError as exc:  # aiohttp, when the provider dropped the connection mid-body
            raise aiohttp.ClientPayloadError(str(exc)) from None
        finally:
            self.response.release()

    def close(self) -> None:
        self.response.close()


@sensitive_variables("headers")
async def send(
    provider: Provider, path: str, *, body: bytes, headers: dict[str, str], stream: bool, method: str = "POST"
) -> Upstream:
    """Send one request to the provider and return once its status line and headers are in.

    Timeouts: the whole call for a JSON answer; for a stream, the wait for each chunk (a stream
    may rightly run for minutes, a silent one may not). Network failures raise
    `aiohttp.ClientError` or `TimeoutError`, which the caller reports as provider unavailable.
    """
    limit = float(settings.PROVIDER_TIMEOUT_SECONDS)
    timeout = (
        aiohttp.ClientTimeout(total=None, connect=10, sock_read=limit)
        if stream
        else aiohttp.ClientTimeout(total=limit, connect=10)
    )
    url = f"{base_url(provider)}{path}"
    try:
        response = await session().request(method, url, data=body or None, headers=headers, timeout=timeout)
    except aiohttp.ServerDisconnectedError:
        # A pooled connection the provider had already closed (it restarted, or dropped an idle
        # keep-alive): the request never got an answer. Once more, on a new connection.
        response = await session().request(method, url, data=body or None, headers=headers, timeout=timeout)
    return Upstream(response)
