"""One pooled HTTP client per event loop, shared by every SDK client built for a call.

Building an SDK client per call keeps the key out of any long-lived object; giving each of them
this shared `httpx2.AsyncClient` keeps connections warm, so a routed call costs no TCP (or TLS)
handshake. The key travels only in that call's request headers, never in the shared client.
"""

from __future__ import annotations

import asyncio
import weakref

import httpx2

_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = weakref.WeakKeyDictionary()

LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)


def shared_http_client() -> httpx2.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None or client.is_closed:
        # Timeouts are set per request by the SDKs; this default only bounds a forgotten one.
        client = httpx2.AsyncClient(limits=LIMITS, timeout=httpx2.Timeout(60.0, connect=5.0), follow_redirects=False)
        _CLIENTS[loop] = client
    return client
