"""The provider sandbox, exercised through the real anthropic / openai SDKs and plain httpx2.

Run: .venv/bin/pytest tests/sandbox/test_sandbox.py -q (pyproject loads ``-p sandbox.pytest_plugin``)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anthropic
import httpx2
import openai
import pytest

from sandbox import (
    CREDIT_BALANCE_MESSAGE,
    NORMAL,
    OPENAI_QUOTA_MESSAGE,
    REPLY_TEXT,
    Behaviour,
    SandboxServer,
    anthropic_key,
    cli,
    client_secret_for,
    count_words,
    embedding_for,
    key_id,
    mask_key,
    oauth_client_id,
    openai_key,
    parse_behaviour,
    reply_text,
)

MODEL = "claude-sonnet-4-6"
GPT = "gpt-4.1-mini"
SYSTEM = "You are terse."  # 3 words
PROMPT = "one two three four five six seven"  # 7 words
MESSAGES: Any = [{"role": "user", "content": PROMPT}]


_open_clients: list[anthropic.Anthropic | openai.OpenAI] = []


def claude(server: SandboxServer, key: str, timeout: float = 5.0) -> anthropic.Anthropic:
    client = anthropic.Anthropic(api_key=key, base_url=server.anthropic_base_url, max_retries=0, timeout=timeout)
    _open_clients.append(client)
    return client


def gpt(server: SandboxServer, key: str, timeout: float = 5.0) -> openai.OpenAI:
    client = openai.OpenAI(api_key=key, base_url=server.openai_base_url, max_retries=0, timeout=timeout)
    _open_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


@pytest.fixture
def http(sandbox: SandboxServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=sandbox.url, timeout=5.0, follow_redirects=False) as client:
        yield client


# --------------------------------------------------------------------------------------
# Behaviour parsing, helpers
# --------------------------------------------------------------------------------------


def test_parse_behaviour_words() -> None:
    assert parse_behaviour("sk-ant-api03-ratelimit-XXXX").ratelimit
    assert parse_behaviour("sk-proj-slow250-abcd").slow_ms == 250
    assert parse_behaviour("sk-proj-slowchunk40-cut_cached-x") == Behaviour(slowchunk_ms=40, cut=True, cached=True)
    assert parse_behaviour("gmail-revoked").revoked
    assert parse_behaviour("app_ttl30_norotate").ttl == 30
    assert parse_behaviour("app-ttl30-norotate").norotate
    # Only whole delimited words count.
    for key in ("sk-ant-api03-slowpoke-x", "sk-proj-errors-abcd", "sk-proj-xhang", "", None, "sk-proj-RATELIMIT-1"):
        assert parse_behaviour(key) is NORMAL


def test_mask_key_never_echoes_the_key() -> None:
    key = "sk-proj-invalid-0123456789abcd"
    assert mask_key(key) == "sk-proj-****abcd"
    for k in ("short", "sk-12345678", "sk-proj-abcdefgh", key):
        assert k not in mask_key(k)


def test_reply_and_words() -> None:
    assert count_words(REPLY_TEXT) == 12
    assert reply_text(12) == REPLY_TEXT
    assert reply_text(3) == "Hello from the"
    assert count_words(reply_text(30)) == 30
    assert count_words("  a\tb\nc  ") == 3


def test_server_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SandboxServer(host="0.0.0.0")  # noqa: S104 - the bind address this test expects to be refused
    with pytest.raises(ValueError, match="loopback"):
        SandboxServer(host="example.com")


def test_base_urls(sandbox: SandboxServer) -> None:
    assert sandbox.url.startswith("http://127.0.0.1:")
    assert sandbox.anthropic_base_url == sandbox.url + "/anthropic"
    assert sandbox.openai_base_url == sandbox.url + "/openai/v1"
    assert sandbox.oauth_base_url == sandbox.url + "/oauth"


# --------------------------------------------------------------------------------------
# Anthropic
# --------------------------------------------------------------------------------------


def test_anthropic_message_exact_usage(sandbox: SandboxServer) -> None:
    messages: Any = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": [{"type": "text", "text": "ok then"}]},
        {"role": "user", "content": [{"type": "text", "text": "again please"}]},
    ]
    msg = claude(sandbox, anthropic_key()).messages.create(
        model=MODEL, max_tokens=100, system=SYSTEM, messages=messages
    )
    assert msg.id.startswith("msg_")
    assert msg.model == MODEL
    assert msg.role == "assistant"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == REPLY_TEXT
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None
    assert msg.usage.input_tokens == 3 + 7 + 2 + 2
    assert msg.usage.output_tokens == 12
    assert msg.usage.cache_read_input_tokens == 0
    assert msg.usage.cache_creation_input_tokens == 0


def test_anthropic_truncated_by_max_tokens(sandbox: SandboxServer) -> None:
    msg = claude(sandbox, anthropic_key()).messages.create(
        model=MODEL, max_tokens=5, system=[{"type": "text", "text": SYSTEM}], messages=MESSAGES
    )
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Hello from the Niyra provider"
    assert msg.stop_reason == "max_tokens"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (10, 5)


def test_anthropic_cached_tokens(sandbox: SandboxServer) -> None:
    client = claude(sandbox, anthropic_key("cached"))
    msg = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    # W = 7 words: 3 read from cache, 4 fresh (input_tokens excludes cache reads, as the real API).
    assert msg.usage.cache_read_input_tokens == 3
    assert msg.usage.input_tokens == 4
    with client.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (4, 3, 12)


def test_anthropic_stream_helper(sandbox: SandboxServer) -> None:
    client = claude(sandbox, anthropic_key())
    deltas: list[str] = []
    with client.messages.stream(model=MODEL, max_tokens=6, system=SYSTEM, messages=MESSAGES) as stream:
        deltas.extend(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) == 6
    assert "".join(deltas) == reply_text(6) == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 6)


def test_anthropic_raw_stream_events(sandbox: SandboxServer) -> None:
    events = list(
        claude(sandbox, anthropic_key()).messages.create(model=MODEL, max_tokens=50, messages=MESSAGES, stream=True)
    )
    types = [e.type for e in events]
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 12,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.usage.input_tokens == 7
    assert start.message.usage.output_tokens == 1
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 12
    assert delta.usage.input_tokens == 7
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == REPLY_TEXT


def test_anthropic_sse_wire_format(http: httpx2.Client) -> None:
    body = {"model": MODEL, "max_tokens": 2, "messages": MESSAGES, "stream": True}
    resp = http.post("/anthropic/v1/messages", json=body, headers={"x-api-key": anthropic_key()})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = resp.text.split("\n\n")
    assert frames[0].startswith("event: message_start\ndata: {")
    assert frames[-2] == 'event: message_stop\ndata: {"type":"message_stop"}'
    assert frames[-1] == ""


def test_anthropic_async_stream(sandbox: SandboxServer) -> None:
    async def run() -> tuple[list[str], anthropic.types.Message]:
        client = anthropic.AsyncAnthropic(
            api_key=anthropic_key("cached"), base_url=sandbox.anthropic_base_url, max_retries=0
        )
        async with client, client.messages.stream(model=MODEL, max_tokens=4, messages=MESSAGES) as stream:
            parts = [text async for text in stream.text_stream]
            return parts, await stream.get_final_message()

    parts, final = asyncio.run(run())
    assert parts == ["Hello", " from", " the", " Niyra"]
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (4, 3, 4)


def test_anthropic_x_api_key_header_and_missing_key(http: httpx2.Client) -> None:
    body = {"model": MODEL, "max_tokens": 3, "messages": MESSAGES}
    ok = http.post("/anthropic/v1/messages", json=body, headers={"x-api-key": anthropic_key()})
    assert ok.status_code == 200
    assert ok.json()["usage"] == {
        "input_tokens": 7,
        "output_tokens": 3,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    missing = http.post("/anthropic/v1/messages", json=body)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": MODEL, "messages": MESSAGES}, "max_tokens: Field required"),
        ({"model": MODEL, "max_tokens": 0, "messages": MESSAGES}, "max_tokens"),
        ({"model": MODEL, "max_tokens": "9", "messages": MESSAGES}, "max_tokens"),
        ({"max_tokens": 9, "messages": MESSAGES}, "model: Field required"),
        ({"model": MODEL, "max_tokens": 9}, "messages: Field required"),
        ({"model": MODEL, "max_tokens": 9, "messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"model": MODEL, "max_tokens": 9, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "text"),
    ],
)
def test_anthropic_validation(http: httpx2.Client, body: dict[str, Any], message: str) -> None:
    resp = http.post("/anthropic/v1/messages", json=body, headers={"x-api-key": anthropic_key()})
    assert resp.status_code == 400
    payload = resp.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert message in payload["error"]["message"]


def test_anthropic_validation_through_sdk(sandbox: SandboxServer) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude(sandbox, anthropic_key()).messages.create(model=MODEL, max_tokens=0, messages=MESSAGES)
    assert exc.value.status_code == 400


def test_anthropic_invalid_key(sandbox: SandboxServer) -> None:
    with pytest.raises(anthropic.AuthenticationError) as exc:
        claude(sandbox, anthropic_key("invalid")).messages.create(model=MODEL, max_tokens=9, messages=MESSAGES)
    assert exc.value.status_code == 401
    assert exc.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }


def test_anthropic_rate_limited(sandbox: SandboxServer) -> None:
    with pytest.raises(anthropic.RateLimitError) as exc:
        claude(sandbox, anthropic_key("ratelimit")).messages.create(model=MODEL, max_tokens=9, messages=MESSAGES)
    assert exc.value.response.headers["retry-after"] == "7"
    assert exc.value.type == "rate_limit_error"


def test_anthropic_no_quota(sandbox: SandboxServer) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude(sandbox, anthropic_key("noquota")).messages.create(model=MODEL, max_tokens=9, messages=MESSAGES)
    assert "credit balance is too low" in exc.value.message
    assert exc.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": CREDIT_BALANCE_MESSAGE},
    }


def test_anthropic_overloaded(sandbox: SandboxServer) -> None:
    with pytest.raises(anthropic.OverloadedError) as exc:
        claude(sandbox, anthropic_key("overloaded")).messages.create(model=MODEL, max_tokens=9, messages=MESSAGES)
    assert isinstance(exc.value, anthropic.InternalServerError)
    assert exc.value.status_code == 529
    assert exc.value.type == "overloaded_error"


def test_anthropic_server_error(sandbox: SandboxServer) -> None:
    with pytest.raises(anthropic.InternalServerError) as exc:
        claude(sandbox, anthropic_key("error")).messages.create(model=MODEL, max_tokens=9, messages=MESSAGES)
    assert exc.value.status_code == 500
    assert exc.value.type == "api_error"


def test_anthropic_errors_also_apply_to_streams(sandbox: SandboxServer) -> None:
    with (
        pytest.raises(anthropic.RateLimitError),
        claude(sandbox, anthropic_key("ratelimit")).messages.stream(model=MODEL, max_tokens=9, messages=MESSAGES) as s,
    ):
        s.get_final_message()


def test_anthropic_hang_times_out(sandbox: SandboxServer) -> None:
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        claude(sandbox, anthropic_key("hang"), timeout=0.3).messages.create(
            model=MODEL, max_tokens=9, messages=MESSAGES
        )
    assert time.monotonic() - started < 2


def test_anthropic_slow(sandbox: SandboxServer) -> None:
    started = time.monotonic()
    claude(sandbox, anthropic_key("slow250")).messages.create(model=MODEL, max_tokens=2, messages=MESSAGES)
    assert time.monotonic() - started >= 0.25


def test_anthropic_slowchunk_streams_incrementally(sandbox: SandboxServer) -> None:
    stamps: list[float] = []
    started = time.monotonic()
    client = claude(sandbox, anthropic_key("slowchunk60"))
    with client.messages.stream(model=MODEL, max_tokens=4, messages=MESSAGES) as stream:
        for _ in stream.text_stream:
            stamps.append(time.monotonic() - started)
    assert len(stamps) == 4
    assert stamps[-1] >= 0.24
    assert stamps[-1] - stamps[0] >= 0.15  # deltas arrive as they are produced, not all at the end


def test_anthropic_cut_stream(sandbox: SandboxServer) -> None:
    received: list[str] = []
    client = claude(sandbox, anthropic_key("cut"))
    # anthropic 2.x does not wrap transport errors raised while iterating a stream: a truncated
    # SSE body surfaces as a bare httpx2.RemoteProtocolError (the openai SDK wraps it in
    # APIConnectionError). Code that maps SDK errors must catch it.
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        client.messages.stream(model=MODEL, max_tokens=10, messages=MESSAGES) as stream,
    ):
        received.extend(stream.text_stream)
    assert received == ["Hello", " from", " the", " Niyra", " provider"]  # half of 10, then nothing


def test_anthropic_cut_non_stream(sandbox: SandboxServer) -> None:
    with pytest.raises(anthropic.APIConnectionError):
        claude(sandbox, anthropic_key("cut")).messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)


def test_anthropic_malformed(sandbox: SandboxServer) -> None:
    # Both SDKs let the JSON decoding error through unwrapped (not an APIError).
    with pytest.raises(json.JSONDecodeError):
        claude(sandbox, anthropic_key("malformed")).messages.create(model=MODEL, max_tokens=9, messages=MESSAGES)


def test_anthropic_models_and_count_tokens(sandbox: SandboxServer) -> None:
    client = claude(sandbox, anthropic_key())
    assert "claude-sonnet-4-6" in [m.id for m in client.models.list()]
    counted = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=MESSAGES)
    assert counted.input_tokens == 10
    with pytest.raises(anthropic.AuthenticationError):
        claude(sandbox, anthropic_key("invalid")).models.list()


# --------------------------------------------------------------------------------------
# OpenAI
# --------------------------------------------------------------------------------------


def test_openai_chat_exact_usage(sandbox: SandboxServer) -> None:
    messages: list[Any] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
    ]
    resp = gpt(sandbox, openai_key()).chat.completions.create(model=GPT, messages=messages)
    assert resp.object == "chat.completion"
    assert resp.model == GPT
    choice = resp.choices[0]
    assert choice.message.content == REPLY_TEXT
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (10, 12, 22)
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 0


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_openai_chat_truncated(sandbox: SandboxServer, param: str) -> None:
    resp = gpt(sandbox, openai_key()).chat.completions.create(model=GPT, messages=MESSAGES, **{param: 4})  # type: ignore[call-overload]
    assert resp.choices[0].message.content == "Hello from the Niyra"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 4


def test_openai_cached_tokens(sandbox: SandboxServer) -> None:
    resp = gpt(sandbox, openai_key("cached")).chat.completions.create(model=GPT, messages=MESSAGES)
    assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens == 7  # includes the cached tokens, as the real API
    assert resp.usage.prompt_tokens_details.cached_tokens == 3


def test_openai_stream_with_usage(sandbox: SandboxServer) -> None:
    chunks = list(
        gpt(sandbox, openai_key("cached")).chat.completions.create(
            model=GPT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, max_tokens=5
        )
    )
    assert len(chunks) == 5 + 1 + 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text(5)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (7, 5, 3)


def test_openai_stream_without_usage(sandbox: SandboxServer) -> None:
    chunks = list(gpt(sandbox, openai_key()).chat.completions.create(model=GPT, messages=MESSAGES, stream=True))
    assert len(chunks) == 12 + 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY_TEXT


def test_openai_sse_wire_format(http: httpx2.Client) -> None:
    body = {"model": GPT, "messages": MESSAGES, "stream": True, "max_tokens": 1}
    resp = http.post("/openai/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {openai_key()}"})
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.endswith("\n\ndata: [DONE]\n\n")
    assert all(frame.startswith("data: ") for frame in resp.text.split("\n\n") if frame)


def test_openai_async_stream(sandbox: SandboxServer) -> None:
    async def run() -> tuple[str, Any]:
        client = openai.AsyncOpenAI(api_key=openai_key(), base_url=sandbox.openai_base_url, max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model=GPT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            text, usage = "", None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                if chunk.usage is not None:
                    usage = chunk.usage
            return text, usage

    text, usage = asyncio.run(run())
    assert text == REPLY_TEXT
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 12, 19)


def test_openai_embeddings_default_base64(sandbox: SandboxServer) -> None:
    client = gpt(sandbox, openai_key())
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["hello world", "x"])
    # The openai SDK asks for base64 on the wire when encoding_format is not given...
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)
    # ...and decodes it back to floats.
    result = raw.parse()
    assert [d.embedding for d in result.data] == [embedding_for("hello world"), embedding_for("x")]
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3


def test_openai_embeddings_float(sandbox: SandboxServer) -> None:
    result = gpt(sandbox, openai_key()).embeddings.create(
        model="text-embedding-3-small", input="the same text", encoding_format="float"
    )
    assert result.data[0].embedding == embedding_for("the same text")
    assert len(result.data[0].embedding) == 8
    assert result.usage.prompt_tokens == 3
    again = gpt(sandbox, openai_key()).embeddings.create(model="text-embedding-3-small", input="the same text")
    assert again.data[0].embedding == result.data[0].embedding


def test_openai_models(sandbox: SandboxServer) -> None:
    assert GPT in [m.id for m in gpt(sandbox, openai_key()).models.list()]


def test_openai_validation(http: httpx2.Client) -> None:
    auth = {"Authorization": f"Bearer {openai_key()}"}
    resp = http.post("/openai/v1/chat/completions", json={"model": GPT}, headers=auth)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "missing_required_parameter"
    resp = http.post(
        "/openai/v1/chat/completions", json={"model": GPT, "messages": MESSAGES, "max_tokens": 0}, headers=auth
    )
    assert resp.json()["error"]["param"] == "max_tokens"
    resp = http.post("/openai/v1/embeddings", json={"model": "e", "input": ""}, headers=auth)
    assert resp.status_code == 400
    resp = http.post("/openai/v1/chat/completions", json={"model": GPT, "messages": MESSAGES})
    assert resp.status_code == 401


def test_openai_invalid_key_is_masked(sandbox: SandboxServer) -> None:
    key = openai_key("invalid")
    with pytest.raises(openai.AuthenticationError) as exc:
        gpt(sandbox, key).chat.completions.create(model=GPT, messages=MESSAGES)
    assert exc.value.code == "invalid_api_key"
    assert f"sk-proj-****{key[-4:]}" in exc.value.message
    assert key not in exc.value.message
    assert key not in exc.value.response.text


def test_openai_rate_limited(sandbox: SandboxServer) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        gpt(sandbox, openai_key("ratelimit")).chat.completions.create(model=GPT, messages=MESSAGES)
    assert exc.value.code == "rate_limit_exceeded"
    assert exc.value.type == "requests"
    assert exc.value.response.headers["retry-after"] == "7"


def test_openai_insufficient_quota(sandbox: SandboxServer) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        gpt(sandbox, openai_key("noquota")).embeddings.create(model="text-embedding-3-small", input="x")
    assert exc.value.code == "insufficient_quota"
    assert exc.value.type == "insufficient_quota"
    assert exc.value.status_code == 429
    assert OPENAI_QUOTA_MESSAGE in exc.value.message


@pytest.mark.parametrize(("word", "status"), [("overloaded", 503), ("error", 500)])
def test_openai_server_errors(sandbox: SandboxServer, word: str, status: int) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        gpt(sandbox, openai_key(word)).chat.completions.create(model=GPT, messages=MESSAGES)
    assert exc.value.status_code == status
    assert exc.value.type == "server_error"


def test_openai_hang_times_out(sandbox: SandboxServer) -> None:
    with pytest.raises(openai.APITimeoutError):
        gpt(sandbox, openai_key("hang"), timeout=0.3).chat.completions.create(model=GPT, messages=MESSAGES)


def test_openai_cut(sandbox: SandboxServer) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in gpt(sandbox, openai_key("cut")).chat.completions.create(
            model=GPT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        ):
            assert chunk.usage is None
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == reply_text(6)
    with pytest.raises(openai.APIConnectionError):
        gpt(sandbox, openai_key("cut")).chat.completions.create(model=GPT, messages=MESSAGES)


def test_openai_malformed(sandbox: SandboxServer) -> None:
    with pytest.raises(json.JSONDecodeError):
        gpt(sandbox, openai_key("malformed")).chat.completions.create(model=GPT, messages=MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        list(gpt(sandbox, openai_key("malformed")).chat.completions.create(model=GPT, messages=MESSAGES, stream=True))


def test_hang_does_not_stall_other_requests(sandbox: SandboxServer) -> None:
    def hang() -> float:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            gpt(sandbox, openai_key("hang"), timeout=2.5).chat.completions.create(model=GPT, messages=MESSAGES)
        return time.monotonic() - started

    with ThreadPoolExecutor(4) as pool:
        hung = [pool.submit(hang) for _ in range(3)]
        time.sleep(0.1)
        started = time.monotonic()
        client = claude(sandbox, anthropic_key())
        for _ in range(20):
            client.messages.create(model=MODEL, max_tokens=2, messages=MESSAGES)
        assert time.monotonic() - started < 2.0  # ~0.1 s normally; generous for loaded CI machines
        assert not any(f.done() for f in hung)
        assert all(f.result() >= 2.5 for f in hung)
    assert [r["status"] for r in sandbox.log.records() if r["api"] == "openai"] == [None] * 3  # never answered


# --------------------------------------------------------------------------------------
# OAuth 2
# --------------------------------------------------------------------------------------

REDIRECT = "http://127.0.0.1:9999/callback"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(http: httpx2.Client, client_id: str, challenge: str, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "mail.read offline_access",
        "state": "st-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    resp = http.get("/oauth/authorize", params=params)
    assert resp.status_code == 302, resp.text
    location = urlsplit(resp.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["st-123"]
    return query["code"][0]


def token(http: httpx2.Client, client_id: str, basic: bool = True, **form: Any) -> httpx2.Response:
    secret = client_secret_for(client_id)
    if basic:
        return http.post("/oauth/token", data=form, auth=(client_id, secret))
    return http.post("/oauth/token", data={**form, "client_id": client_id, "client_secret": secret})


def login(http: httpx2.Client, client_id: str) -> dict[str, Any]:
    verifier, challenge = pkce()
    code = authorize(http, client_id, challenge)
    resp = token(
        http, client_id, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier
    )
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def refresh(http: httpx2.Client, client_id: str, refresh_token: str) -> httpx2.Response:
    return token(http, client_id, grant_type="refresh_token", refresh_token=refresh_token)


def userinfo(http: httpx2.Client, access_token: str) -> int:
    return http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {access_token}"}).status_code


def test_oauth_code_pkce_flow(http: httpx2.Client) -> None:
    client_id = oauth_client_id(name="gmail")
    verifier, challenge = pkce()
    code = authorize(http, client_id, challenge)
    exchange: Any = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}

    wrong = token(http, client_id, **exchange, code_verifier=pkce()[0])
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert "error_description" in wrong.json()
    assert token(http, client_id, **{**exchange, "redirect_uri": REDIRECT + "x"}, code_verifier=verifier).json()[
        "error"
    ] == ("invalid_grant")

    ok = token(http, client_id, basic=False, **exchange, code_verifier=verifier)
    assert ok.status_code == 200
    assert ok.headers["cache-control"] == "no-store"
    tokens = ok.json()
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["scope"] == "mail.read offline_access"
    assert userinfo(http, tokens["access_token"]) == 200
    info = http.get("/oauth/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert info["sub"]

    # Single use: a second redemption fails and revokes what the code issued (RFC 6749 4.1.2).
    again = token(http, client_id, **exchange, code_verifier=verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert userinfo(http, tokens["access_token"]) == 401


def test_oauth_code_bound_to_client(http: httpx2.Client) -> None:
    verifier, challenge = pkce()
    code = authorize(http, oauth_client_id(), challenge)
    other = oauth_client_id()
    resp = token(http, other, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier)
    assert resp.json()["error"] == "invalid_grant"


def test_oauth_code_expires() -> None:
    with SandboxServer(code_ttl=0.2) as server, httpx2.Client(base_url=server.url) as http:
        client_id = oauth_client_id()
        verifier, challenge = pkce()
        code = authorize(http, client_id, challenge)
        time.sleep(0.3)
        resp = token(
            http, client_id, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier
        )
        assert resp.status_code == 400
        assert resp.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": None},
        {"redirect_uri": None},
        {"redirect_uri": "not a url"},
        {"response_type": "token"},
        {"code_challenge": None},
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},
    ],
)
def test_oauth_authorize_rejects_bad_requests(http: httpx2.Client, params: dict[str, str | None]) -> None:
    base = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": REDIRECT,
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    query = {k: v for k, v in {**base, **params}.items() if v is not None}
    resp = http.get("/oauth/authorize", params=query)
    assert resp.status_code == 400
    assert resp.json()["error"] in {"invalid_request", "unsupported_response_type"}


def test_oauth_wrong_client_secret(http: httpx2.Client) -> None:
    verifier, challenge = pkce()
    client_id = oauth_client_id()
    code = authorize(http, client_id, challenge)
    form: Any = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    resp = http.post("/oauth/token", data=form, auth=(client_id, "secret-wrong"))
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    resp = http.post("/oauth/token", data={**form, "client_id": client_id})
    assert resp.status_code == 401
    # The code survived the failed client authentication.
    assert token(http, client_id, **form).status_code == 200


def test_oauth_refresh_rotation_and_reuse_detection(sandbox: SandboxServer, http: httpx2.Client) -> None:
    client_id = oauth_client_id(name="gmail")
    first = login(http, client_id)
    second = refresh(http, client_id, first["refresh_token"])
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert rotated["access_token"] != first["access_token"]
    assert userinfo(http, rotated["access_token"]) == 200
    third = refresh(http, client_id, rotated["refresh_token"])
    assert third.status_code == 200
    latest = third.json()

    # Replaying an already-rotated refresh token revokes the whole grant.
    replay = refresh(http, client_id, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert userinfo(http, latest["access_token"]) == 401
    assert userinfo(http, first["access_token"]) == 401
    assert refresh(http, client_id, latest["refresh_token"]).json()["error"] == "invalid_grant"

    assert sandbox.log.count_refresh(first["refresh_token"]) == 2
    assert sandbox.log.count_refresh(rotated["refresh_token"]) == 1
    assert sandbox.log.count_refresh(latest["refresh_token"]) == 1


def test_oauth_norotate(http: httpx2.Client) -> None:
    client_id = oauth_client_id("norotate")
    first = login(http, client_id)
    for _ in range(2):
        resp = refresh(http, client_id, first["refresh_token"])
        assert resp.status_code == 200
        assert "refresh_token" not in resp.json()
        assert userinfo(http, resp.json()["access_token"]) == 200


def test_oauth_noexpiry(http: httpx2.Client) -> None:
    client_id = oauth_client_id("noexpiry")
    first = login(http, client_id)
    assert "expires_in" not in first
    assert "expires_in" not in refresh(http, client_id, first["refresh_token"]).json()


def test_oauth_revoked_client(http: httpx2.Client) -> None:
    client_id = oauth_client_id("revoked")
    first = login(http, client_id)
    assert userinfo(http, first["access_token"]) == 200
    resp = refresh(http, client_id, first["refresh_token"])
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"
    assert userinfo(http, first["access_token"]) == 401


def test_oauth_ttl_word_expires_access_tokens(http: httpx2.Client) -> None:
    client_id = oauth_client_id("ttl1")
    first = login(http, client_id)
    assert first["expires_in"] == 1
    assert userinfo(http, first["access_token"]) == 200
    time.sleep(1.05)
    assert userinfo(http, first["access_token"]) == 401
    renewed = refresh(http, client_id, first["refresh_token"]).json()
    assert userinfo(http, renewed["access_token"]) == 200


def test_oauth_server_ttl(sandbox: SandboxServer, http: httpx2.Client) -> None:
    sandbox.access_token_ttl = 42
    assert login(http, oauth_client_id())["expires_in"] == 42
    with SandboxServer(access_token_ttl=5) as other, httpx2.Client(base_url=other.url) as other_http:
        assert login(other_http, oauth_client_id())["expires_in"] == 5


def test_oauth_ttl_restored_by_fixture(sandbox: SandboxServer) -> None:
    assert sandbox.access_token_ttl == 3600


def test_oauth_revoke_endpoint(http: httpx2.Client) -> None:
    client_id = oauth_client_id()
    first = login(http, client_id)
    resp = http.post("/oauth/revoke", data={"token": first["refresh_token"]}, auth=(client_id, "secret-" + client_id))
    assert resp.status_code == 200
    assert userinfo(http, first["access_token"]) == 401
    assert refresh(http, client_id, first["refresh_token"]).json()["error"] == "invalid_grant"
    assert http.post("/oauth/revoke", data={"token": "unknown"}).status_code == 200
    second = login(http, client_id)
    assert http.post("/oauth/revoke", data={"token": second["access_token"]}).status_code == 200
    assert userinfo(http, second["access_token"]) == 401


@pytest.mark.parametrize(("word", "status", "error"), [("ratelimit", 429, "rate_limit_exceeded"), ("down", 503, None)])
def test_oauth_token_endpoint_failures(http: httpx2.Client, word: str, status: int, error: str | None) -> None:
    client_id = oauth_client_id(word)
    verifier, challenge = pkce()
    code = authorize(http, client_id, challenge)
    resp = token(
        http, client_id, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier
    )
    assert resp.status_code == status
    assert "error" in resp.json()
    if error:
        assert resp.json()["error"] == error
    if status == 429:
        assert resp.headers["retry-after"] == "7"


def test_oauth_slow_and_hang(http: httpx2.Client) -> None:
    started = time.monotonic()
    resp = token(http, oauth_client_id("slow200"), grant_type="refresh_token", refresh_token="nope")
    assert resp.status_code == 400
    assert time.monotonic() - started >= 0.2
    with pytest.raises(httpx2.ReadTimeout):
        http.post("/oauth/token", data={"grant_type": "refresh_token"}, auth=("x-hang", "secret-x-hang"), timeout=0.3)


def test_userinfo_without_token(http: httpx2.Client) -> None:
    resp = http.get("/oauth/userinfo")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")


# --------------------------------------------------------------------------------------
# Request log
# --------------------------------------------------------------------------------------


def test_request_log_counts_and_never_holds_secrets(sandbox: SandboxServer, http: httpx2.Client) -> None:
    canary_a = anthropic_key() + "CANARY"
    canary_o = openai_key("ratelimit") + "CANARY"
    for _ in range(3):
        claude(sandbox, canary_a).messages.create(model=MODEL, max_tokens=1, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        gpt(sandbox, canary_o).chat.completions.create(model=GPT, messages=MESSAGES, stream=True)
    client_id = oauth_client_id()
    tokens = login(http, client_id)
    refresh(http, client_id, tokens["refresh_token"])

    log = sandbox.log
    assert log.count(key=canary_a) == 3
    assert log.count(key=canary_a, path="/v1/messages") == 3
    assert log.count(key=canary_o) == 1
    assert log.count(api="anthropic") == 3
    assert log.count(api="openai", path="/openai/v1/chat/completions") == 1
    assert log.count(api="oauth") == 3  # authorize, code exchange, refresh
    assert log.count_refresh(tokens["refresh_token"]) == 1

    records = log.records()
    first = records[0]
    assert first["api"] == "anthropic"
    assert first["path"] == "/anthropic/v1/messages"
    assert first["method"] == "POST"
    assert first["key_id"] == key_id(canary_a) == hashlib.sha256(canary_a.encode()).hexdigest()[:16]
    assert first["model"] == MODEL
    assert first["stream"] is False
    assert first["status"] == 200
    assert isinstance(first["at"], float)
    openai_rec = records[3]
    assert (openai_rec["stream"], openai_rec["status"]) == (True, 429)
    token_recs = [r for r in records if r["path"] == "/oauth/token"]
    assert [r["grant_type"] for r in token_recs] == ["authorization_code", "refresh_token"]
    assert token_recs[1]["client_id"] == client_id
    assert token_recs[1]["refresh_token_id"] == key_id(tokens["refresh_token"])

    dumped = json.dumps(records) + http.get("/_sandbox/log").text
    for secret in (canary_a, canary_o, tokens["refresh_token"], tokens["access_token"], client_secret_for(client_id)):
        assert secret not in dumped
    assert "CANARY" not in dumped

    records[0]["status"] = 999  # records() is a copy
    assert log.records()[0]["status"] == 200


def test_request_log_http_endpoints(sandbox: SandboxServer, http: httpx2.Client) -> None:
    claude(sandbox, anthropic_key()).messages.create(model=MODEL, max_tokens=1, messages=MESSAGES)
    remote = http.get("/_sandbox/log").json()
    assert len(remote) == 1
    assert remote[0]["api"] == "anthropic"
    login(http, oauth_client_id())
    assert http.post("/_sandbox/reset").json() == {"ok": True}
    assert sandbox.log.records() == []
    assert len(http.get("/_sandbox/log").json()) == 0


def test_fixture_clears_log(sandbox: SandboxServer) -> None:
    assert sandbox.log.records() == []


def test_log_is_thread_safe(sandbox: SandboxServer) -> None:
    key = anthropic_key()

    def burst() -> None:
        client = claude(sandbox, key)
        for _ in range(10):
            client.messages.create(model=MODEL, max_tokens=1, messages=MESSAGES)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        sandbox.log.records()
        sandbox.log.count(key=key)
    for t in threads:
        t.join()
    assert sandbox.log.count(key=key, status=200) == 40


# --------------------------------------------------------------------------------------
# Runner and the python -m sandbox entry point
# --------------------------------------------------------------------------------------


def test_start_stop_context_manager() -> None:
    server = SandboxServer()
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        url = server.url
        assert httpx2.get(url + "/_sandbox/log").status_code == 200
    assert not server.running
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url + "/_sandbox/log", timeout=1)


def test_entry_point_refuses_non_loopback() -> None:
    with pytest.raises(SystemExit, match="loopback"):
        cli.serve(host="0.0.0.0", port=8765)  # noqa: S104 - must be refused, as tested
    with pytest.raises(SystemExit, match="loopback"):
        cli.main(["--host", "10.1.2.3", "--port", "8765"])


def test_entry_point_serves_in_foreground(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[SandboxServer] = []

    class Recording(SandboxServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(cli, "SandboxServer", Recording)
    out = io.StringIO()
    worker = threading.Thread(target=cli.serve, kwargs={"host": "127.0.0.1", "port": 0, "out": out})
    worker.start()
    deadline = time.monotonic() + 5
    while "OAuth base URL" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    text = out.getvalue()
    (server,) = created
    assert f"listening on {server.url}" in text
    assert f"Anthropic base URL: {server.url}/anthropic" in text
    assert f"OpenAI base URL:    {server.url}/openai/v1" in text
    assert f"OAuth base URL:     {server.url}/oauth" in text
    assert httpx2.post(server.url + "/_sandbox/reset").status_code == 200
    server.stop()
    worker.join(5)
    assert not worker.is_alive()
    assert "stopped" in out.getvalue()
