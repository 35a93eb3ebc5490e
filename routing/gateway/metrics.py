"""The gateway's metrics (core.metrics serves them): every routed call, what it used, how long it
took, and how much of that was Niyra's own doing.

Niyra's added latency is a call's whole time (from its request's arrival to its last byte sent)
less the time spent waiting on the provider (for its headers, then for each read of its body):
the auth, the hold, the relay and the books. A slow provider leaves it unchanged.

Labels: surface, provider and key source are small enums; the model is a catalogue id (the
catalogue resolves every request's model before a call opens, so an unknown name never gets
here); the outcome is a fixed word or an error catalogue code, or `provider_<status>`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from core import metrics
from credits.pricing import Usage

CALLS = Counter(
    "niyra_routed_calls_total",
    "Routed calls closed, by surface, provider, model, key source and outcome.",
    ["surface", "provider", "model", "key_source", "outcome"],
)
CALL_SECONDS = Histogram(
    "niyra_routed_call_duration_seconds",
    "A routed call's whole time: from its request's arrival to its last byte sent.",
    ["surface", "provider", "key_source", "stream"],
    buckets=metrics.REQUEST_LATENCY_BUCKETS,
)
ADDED_SECONDS = Histogram(
    "niyra_routed_call_added_seconds",
    "Niyra's added latency: a routed call's whole time less the time spent waiting on the provider.",
    ["surface", "provider", "key_source", "stream"],
    buckets=metrics.ADDED_LATENCY_BUCKETS,
)
TTFB_SECONDS = Histogram(
    "niyra_routed_call_ttfb_seconds",
    "A stream's time to first byte: from its request's arrival to its response's first byte.",
    ["surface", "provider", "key_source"],
    buckets=metrics.REQUEST_LATENCY_BUCKETS,
)
TOKENS = Counter(
    "niyra_routed_tokens_total",
    "Tokens the providers reported for routed calls, by provider, model and kind.",
    ["provider", "model", "kind"],
)
REFUSALS = Counter(
    "niyra_gateway_refusals_total",
    "Gateway requests answered with an error before any call was routed, by error code.",
    ["code"],
)

# The token counts of a call's usage, by the kind they are exported as.
TOKEN_KINDS = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cached_tokens", "cache_read"),
    ("cache_write_tokens", "cache_write"),
    ("reasoning_tokens", "reasoning"),
    ("audio_input_tokens", "audio_input"),
    ("audio_output_tokens", "audio_output"),
)


def call_closed(*, surface: str, provider: str, model: str, key_source: str, outcome: str, usage: Usage) -> None:
    if not metrics.enabled():
        return
    CALLS.labels(surface, provider, model, key_source, outcome).inc()
    for field, kind in TOKEN_KINDS:
        count = getattr(usage, field)
        if count:
            TOKENS.labels(provider, model, kind).inc(count)


def call_timed(
    *,
    surface: str,
    provider: str,
    key_source: str,
    stream: bool,
    total: float,
    provider_wait: float,
    first_byte: float | None,
) -> None:
    """A finished call's times (seconds): whole, waiting on the provider, and to its first byte."""
    if not metrics.enabled():
        return
    streamed = "true" if stream else "false"
    CALL_SECONDS.labels(surface, provider, key_source, streamed).observe(total)
    ADDED_SECONDS.labels(surface, provider, key_source, streamed).observe(max(0.0, total - provider_wait))
    if stream and first_byte is not None:
        TTFB_SECONDS.labels(surface, provider, key_source).observe(first_byte)


def refused(code: str) -> None:
    if metrics.enabled():
        REFUSALS.labels(code).inc()
