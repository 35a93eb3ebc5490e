"""A user's key used for routed calls (success, stream, rejection, rate limit, a cut stream) on
the native API and on the gateway's surfaces appears in no log record (seen before the
redaction filter; the gateway's own loggers included), response, task message, database column
or cache entry. Reuses the BYOK canary trap."""

from __future__ import annotations

import secrets
from typing import Any

import httpx2
import pytest
from django.http import HttpResponse

from accounts.services import api_token_create
from tests.byok.test_never_leaked import LeakTrap, assert_never_leaked, trap  # noqa: F401 - fixture
from tests.routing.test_dispatch import stream_response

# The gateway reads the key on its own connections: the stored key must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "hi"}]


def _kept(status: int, headers: Any, body: bytes) -> HttpResponse:
    """A response as the trap searches it (status, headers, body)."""
    return HttpResponse(body, status=status, headers=dict(headers))


@pytest.mark.parametrize("behaviour", ["", "invalid", "ratelimit", "cut"])
def test_the_key_never_leaves_the_call(
    make_account: Any,
    client_for: Any,
    store_key: Any,
    live_asgi: str,
    trap: LeakTrap,  # noqa: F811 - the fixture imported above
    behaviour: str,
) -> None:
    canary = "canary" + secrets.token_hex(12)
    user = make_account(plan="pro")
    store_key(user, "anthropic", "-".join(filter(None, ("sk-ant-api03", behaviour, canary))))
    body = {"model": "claude-haiku-4-5", "messages": HI, "max_tokens": 50}

    # The native API, in full and streamed
    trap.keep(client_for(user).post("/api/llm/messages", body, format="json"))
    response, raw = stream_response(user, **body)
    trap.keep(_kept(response.status_code, response.items(), raw))
    # The gateway's surfaces, over a live server: Anthropic's own API and the universal one
    token = api_token_create(user=user, name="canary").plaintext
    with httpx2.Client(base_url=live_asgi, timeout=20, headers={"Authorization": f"Bearer {token}"}) as http:
        for path in ("/anthropic/v1/messages", "/v1/chat/completions"):
            for stream in (False, True):
                answer = http.post(path, json=body | {"stream": stream})
                trap.keep(_kept(answer.status_code, answer.headers.items(), answer.content))

    assert any(r.name.startswith("routing.gateway") for r in trap.records), "the trap saw none of the gateway's logs"
    assert_never_leaked(canary, trap)
