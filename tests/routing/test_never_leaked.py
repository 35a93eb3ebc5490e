"""A user's key used for routed calls (success, stream, rejection, rate limit, a cut stream)
appears in no log record (seen before the redaction filter), response, task message, database
column or cache entry. Reuses the BYOK canary trap."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from django.http import HttpResponse

from tests.byok.test_never_leaked import LeakTrap, assert_never_leaked, trap  # noqa: F401 - fixture
from tests.routing.test_dispatch import consume

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("behaviour", ["", "invalid", "ratelimit", "cut"])
def test_the_key_never_leaves_the_call(
    make_account: Any,
    client_for: Any,
    store_key: Any,
    trap: LeakTrap,  # noqa: F811 - the fixture imported above
    behaviour: str,
) -> None:
    canary = "canary" + secrets.token_hex(12)
    user = make_account(plan="pro")
    store_key(user, "anthropic", "-".join(filter(None, ("sk-ant-api03", behaviour, canary))))
    client = client_for(user)

    for stream in (False, True):
        response = client.post(
            "/api/llm/messages",
            {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}], "stream": stream},
            format="json",
        )
        if response.streaming:  # the streamed body, as a plain response the trap can search
            response = HttpResponse(consume(response), status=response.status_code, headers=dict(response.items()))
        trap.keep(response)

    assert_never_leaked(canary, trap)
