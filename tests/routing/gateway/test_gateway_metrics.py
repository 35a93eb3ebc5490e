"""The gateway's metrics move as each kind of call and failure says (routing.gateway.metrics),
and every request's id comes back in a header and names its log line (core.request_observer).

The live gateway runs in this process (single-process mode), so its figures are read from
prometheus-client's registry before and after each call."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import pytest
from prometheus_client import REGISTRY

from core import errors
from routing.models import RoutedCall
from sandbox import anthropic_key, openai_key
from tests.faults.services import wait_for
from tests.log_lines import console_handler_into
from tests.routing.gateway.conftest import Niyra

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello"}]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Moves:
    """The change of a few samples across a block: `moves.of(name, **labels)` after it."""

    def __init__(self) -> None:
        self.before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def watch(self, name: str, **labels: str) -> Moves:
        self.before[(name, tuple(sorted(labels.items())))] = value(name, **labels)
        return self

    def of(self, name: str, **labels: str) -> float:
        return value(name, **labels) - self.before[(name, tuple(sorted(labels.items())))]


def call_labels(provider: str, key_source: str, outcome: str, *, surface: str, model: str = MODEL) -> dict[str, str]:
    return {"surface": surface, "provider": provider, "model": model, "key_source": key_source, "outcome": outcome}


def timing(surface: str, provider: str, key_source: str, stream: bool) -> dict[str, str]:
    return {"surface": surface, "provider": provider, "key_source": key_source, "stream": str(stream).lower()}


def test_a_json_call_on_credits_counts_the_call_its_tokens_and_its_times(niyra: Niyra, make_account: Any) -> None:
    user = make_account(plan="free")
    ok = call_labels("anthropic", "platform", "ok", surface="anthropic.messages")
    times = timing("anthropic.messages", "anthropic", "platform", False)
    moves = (
        Moves()
        .watch("niyra_routed_calls_total", **ok)
        .watch("niyra_routed_tokens_total", provider="anthropic", model=MODEL, kind="input")
        .watch("niyra_routed_tokens_total", provider="anthropic", model=MODEL, kind="output")
        .watch("niyra_routed_call_duration_seconds_count", **times)
        .watch("niyra_routed_call_added_seconds_count", **times)
        .watch(
            "niyra_routed_call_ttfb_seconds_count",
            surface="anthropic.messages",
            provider="anthropic",
            key_source="platform",
        )
        .watch("niyra_http_requests_total", area="gateway", method="POST", status="200")
    )

    message = niyra.anthropic(user).messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    assert moves.of("niyra_routed_calls_total", **ok) == 1
    assert (
        moves.of("niyra_routed_tokens_total", provider="anthropic", model=MODEL, kind="input")
        == message.usage.input_tokens
    )
    assert (
        moves.of("niyra_routed_tokens_total", provider="anthropic", model=MODEL, kind="output")
        == message.usage.output_tokens
    )
    assert moves.of("niyra_routed_call_duration_seconds_count", **times) == 1
    assert moves.of("niyra_routed_call_added_seconds_count", **times) == 1
    assert (
        moves.of(
            "niyra_routed_call_ttfb_seconds_count",
            surface="anthropic.messages",
            provider="anthropic",
            key_source="platform",
        )
        == 0
    )
    assert moves.of("niyra_http_requests_total", area="gateway", method="POST", status="200") == 1


def test_a_stream_on_the_users_key_counts_its_time_to_first_byte(
    niyra: Niyra, make_account: Any, store_key: Callable[..., Any]
) -> None:
    user = make_account(plan="pro")
    store_key(user, "openai", openai_key())
    ok = call_labels("openai", "byok", "ok", surface="openai.chat", model="gpt-4o-mini")
    ttfb = {"surface": "openai.chat", "provider": "openai", "key_source": "byok"}
    moves = (
        Moves()
        .watch("niyra_routed_calls_total", **ok)
        .watch("niyra_routed_call_ttfb_seconds_count", **ttfb)
        .watch("niyra_routed_call_duration_seconds_count", **timing("openai.chat", "openai", "byok", True))
    )

    stream = niyra.openai(user).chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert moves.of("niyra_routed_calls_total", **ok) == 1
    assert moves.of("niyra_routed_call_ttfb_seconds_count", **ttfb) == 1
    assert moves.of("niyra_routed_call_duration_seconds_count", **timing("openai.chat", "openai", "byok", True)) == 1


@pytest.mark.parametrize(
    ("word", "outcome"),
    [
        ("invalid", errors.KEY_REJECTED.code),
        ("ratelimit", errors.KEY_RATE_LIMITED.code),
        ("error", errors.PROVIDER_UNAVAILABLE.code),
    ],
)
def test_a_call_the_provider_refuses_counts_under_its_outcome(
    niyra: Niyra, make_account: Any, store_key: Callable[..., Any], word: str, outcome: str
) -> None:
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key(word))
    refused = call_labels("anthropic", "byok", outcome, surface="anthropic.messages")
    ok = call_labels("anthropic", "byok", "ok", surface="anthropic.messages")
    moves = Moves().watch("niyra_routed_calls_total", **refused).watch("niyra_routed_calls_total", **ok)

    with pytest.raises(anthropic.APIStatusError):
        niyra.anthropic(user).messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    assert moves.of("niyra_routed_calls_total", **refused) == 1
    assert moves.of("niyra_routed_calls_total", **ok) == 0


def test_a_request_refused_before_any_call_counts_its_error_code_and_no_call(niyra: Niyra, make_account: Any) -> None:
    user = make_account(plan="free")
    moves = (
        Moves()
        .watch("niyra_gateway_refusals_total", code=errors.AUTHENTICATION_FAILED.code)
        .watch("niyra_gateway_refusals_total", code=errors.MODEL_NOT_SUPPORTED.code)
        .watch("niyra_http_requests_total", area="gateway", method="POST", status="401")
    )
    calls_before = sum(s.value for m in REGISTRY.collect() if m.name == "niyra_routed_calls" for s in m.samples)

    with pytest.raises(anthropic.AuthenticationError):
        niyra.anthropic(token="niy_nope12_notarealtoken000000").messages.create(
            model=MODEL, max_tokens=10, messages=HELLO
        )
    with pytest.raises(anthropic.APIStatusError):
        niyra.anthropic(user).messages.create(model="gpt-4o-mini", max_tokens=10, messages=HELLO)

    assert moves.of("niyra_gateway_refusals_total", code=errors.AUTHENTICATION_FAILED.code) == 1
    assert moves.of("niyra_gateway_refusals_total", code=errors.MODEL_NOT_SUPPORTED.code) == 1
    assert moves.of("niyra_http_requests_total", area="gateway", method="POST", status="401") == 1
    calls_after = sum(s.value for m in REGISTRY.collect() if m.name == "niyra_routed_calls" for s in m.samples)
    assert calls_after == calls_before


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_added_latency_leaves_out_the_time_spent_waiting_on_a_slow_provider(
    niyra: Niyra, make_account: Any, store_key: Callable[..., Any], stream: bool
) -> None:
    """The sandbox key waits 400 ms before answering (and, streamed, 60 ms before each of the
    reply's 12 tokens): the call takes that long, Niyra's share of it doesn't."""
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key("slow400", "slowchunk60") if stream else anthropic_key("slow400"))
    times = timing("anthropic.messages", "anthropic", "byok", stream)
    moves = (
        Moves()
        .watch("niyra_routed_call_duration_seconds_sum", **times)
        .watch("niyra_routed_call_added_seconds_sum", **times)
        .watch("niyra_routed_call_added_seconds_count", **times)
    )
    provider_time = 0.4 + (12 * 0.06 if stream else 0)

    client = niyra.anthropic(user)
    if stream:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as events:
            assert events.get_final_text()
    else:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    total, added = (
        moves.of("niyra_routed_call_duration_seconds_sum", **times),
        moves.of("niyra_routed_call_added_seconds_sum", **times),
    )
    assert moves.of("niyra_routed_call_added_seconds_count", **times) == 1
    assert total >= provider_time
    assert added <= total - provider_time + 1e-6  # exactly what the provider took is left out
    assert added < 0.25, f"Niyra's own share of the call: {added * 1000:.0f} ms of {total * 1000:.0f} ms"


def test_the_request_id_comes_back_in_a_header_and_names_the_requests_log_line(
    niyra: Niyra, make_account: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Support finds a user's call from what the user saw: the response's X-Niyra-Request-Id
    (the client's X-Request-Id, when it sent a well-formed one) and X-Niyra-Call-Id are on the
    log line. The provider's own X-Request-Id is relayed as it was, alone."""
    user = make_account(plan="free")
    body = {"model": MODEL, "max_tokens": 50, "messages": HELLO}
    headers = {"Authorization": f"Bearer {niyra.token(user)}", "anthropic-version": "2023-06-01"}
    caplog.set_level(logging.INFO, logger="niyra.requests")

    with httpx2.Client(base_url=niyra.url, timeout=30) as client:
        chosen = client.post(
            "/anthropic/v1/messages", json=body, headers={**headers, "X-Request-Id": "support-case-4711"}
        )
        assigned = client.post("/anthropic/v1/messages", json=body, headers=headers)
        forged = client.post(
            "/anthropic/v1/messages", json=body, headers={**headers, "X-Request-Id": "bad id <script>"}
        )
        page = client.get("/api/credits/balance", headers={"Authorization": headers["Authorization"]})
        chat = {"model": "gpt-4o-mini", "messages": HELLO}
        relayed = client.post(
            "/openai/v1/chat/completions", json=chat, headers={**headers, "X-Request-Id": "mine-12345"}
        )

    assert chosen.status_code == assigned.status_code == 200
    assert chosen.headers["x-niyra-request-id"] == "support-case-4711"
    assert len(assigned.headers["x-niyra-request-id"]) == 32 and forged.headers["x-niyra-request-id"] not in (
        "bad id <script>",
        "",
    )
    assert relayed.headers["x-niyra-request-id"] == "mine-12345"
    (provider_id,) = relayed.headers.get_list("x-request-id")  # OpenAI's own, as its SDK reads it
    assert provider_id.startswith("req_")
    ids = {answer.headers["x-niyra-request-id"] for answer in (chosen, assigned, forged, page)}
    # The line is written once the response has gone out: it may follow the client's read.
    wait_for(
        lambda: ids <= {r.request_id for r in caplog.records if r.name == "niyra.requests"},
        timeout=5,
        what="the log lines",
    )
    lines = {r.request_id: r for r in caplog.records if r.name == "niyra.requests"}
    for answer in (chosen, assigned, forged, page):
        line = lines[answer.headers["x-niyra-request-id"]]
        assert (line.status, line.method) == (answer.status_code, answer.request.method)
    for answer in (chosen, assigned):
        line = lines[answer.headers["x-niyra-request-id"]]
        assert line.call_id == answer.headers["x-niyra-call-id"]
        assert line.user_id == user.pk and line.area == "gateway"
        assert RoutedCall.objects.filter(id=line.call_id, user=user).exists()
    assert not hasattr(lines[page.headers["x-niyra-request-id"]], "call_id")


def test_the_request_log_line_is_one_json_object_with_the_ids(niyra: Niyra, make_account: Any) -> None:
    """As production writes it: the settings' console handler (its filters and JSON formatter)."""
    user = make_account(plan="free")
    buffer = io.StringIO()
    keep = console_handler_into(buffer)
    requests_logger = logging.getLogger("niyra.requests")
    requests_logger.addHandler(keep)
    try:
        answer = httpx2.post(
            f"{niyra.url}/anthropic/v1/messages",
            json={"model": MODEL, "max_tokens": 50, "messages": HELLO},
            headers={"Authorization": f"Bearer {niyra.token(user)}", "anthropic-version": "2023-06-01"},
            timeout=30,
        )
        request_id = answer.headers["x-niyra-request-id"]
        # The line is written once the response has gone out: it may follow the client's read.
        wait_for(lambda: request_id in buffer.getvalue(), timeout=5, what="the log line")
    finally:
        requests_logger.removeHandler(keep)

    (line,) = [json.loads(text) for text in buffer.getvalue().splitlines() if request_id in text]
    assert line["request_id"] == answer.headers["x-niyra-request-id"]
    assert line["call_id"] == answer.headers["x-niyra-call-id"]
    assert (line["logger"], line["level"], line["status"], line["path"]) == (
        "niyra.requests",
        "INFO",
        200,
        "/anthropic/v1/messages",
    )
    assert line["duration_ms"] > 0 and "time" in line
