"""The production web command serves its metrics on the private port only, summed over its
worker processes (core.metrics, gunicorn.conf.py), and nothing there or in its JSON log lines
carries a user's key."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounts.services import api_token_create
from core import errors
from sandbox import SandboxServer, anthropic_key
from tests.faults.services import WebServer, deployment_env, free_port, start_web, wait_for  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

CALLS = 6


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_metrics_are_served_on_the_private_port_only_summed_over_the_workers(
    start_web: Callable[..., WebServer],  # noqa: F811
    sandbox: SandboxServer,
    make_account: Any,
    store_key: Callable[..., Any],
    settings: Any,
) -> None:
    canary = "canary" + secrets.token_hex(12)
    metrics_port = free_port()
    env = deployment_env(redis_url=str(settings.REDIS_URL), sandbox=sandbox, METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    web = start_web(env, "a", workers=2)
    payer = make_account(plan="free")
    owner = make_account(plan="pro")
    store_key(owner, "anthropic", anthropic_key("invalid", canary))  # refused: its key is in no label
    body = {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]}

    with httpx2.Client(base_url=web.url, timeout=30) as client:
        for user, calls, expected in ((payer, CALLS, 200), (owner, 1, 401)):
            headers = {"Authorization": f"Bearer {api_token_create(user=user, name='m').plaintext}"}
            for _ in range(calls):
                assert client.post("/anthropic/v1/messages", json=body, headers=headers).status_code == expected
        public = [client.get(path) for path in ("/metrics", "/metrics/", "/v1/metrics", "/anthropic/metrics")]
    # (Django's 404 page needs the collected static files' manifest, which this checkout lacks:
    # a 500 here is that page failing, not a route.)
    assert all(answer.status_code in (404, 500) for answer in public), [a.status_code for a in public]
    assert not any("niyra_" in answer.text for answer in public)

    def scrape() -> str:
        answer = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert answer.status_code == 200
        return answer.text

    # The pools are sampled every few seconds by each worker.
    def sampled() -> str | None:
        text = scrape()
        return text if 'niyra_db_pool_connections{pool="gateway"' in text else None

    text = wait_for(sampled, timeout=15, what="the gateway pool's figures")
    calls = samples(text, "niyra_routed_calls_total")
    by_outcome = {dict(labels)["outcome"]: count for labels, count in calls.items()}
    assert by_outcome == {"ok": CALLS, errors.KEY_REJECTED.code: 1}, by_outcome
    gateway = samples(text, "niyra_http_requests_total")
    assert gateway[(("area", "gateway"), ("method", "POST"), ("status", "200"))] == CALLS
    assert gateway[(("area", "gateway"), ("method", "POST"), ("status", "401"))] == 1
    assert sum(samples(text, "niyra_routed_call_added_seconds_count").values()) == CALLS + 1
    pools = {dict(labels)["pool"] for labels in samples(text, "niyra_db_pool_connections")}
    assert "gateway" in pools

    assert canary not in text and canary not in web.log()
    json_lines = [json.loads(line) for line in web.log().splitlines() if line.startswith("{")]
    requests = [line for line in json_lines if line["logger"] == "niyra.requests"]
    assert len(requests) >= CALLS + 1 and all(line["request_id"] for line in requests)
