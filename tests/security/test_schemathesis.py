"""Hostile input against every operation in the OpenAPI schema (Schemathesis).

Each operation gets schema-derived valid and invalid requests (Schemathesis' coverage phase,
then a bounded, derandomized fuzzing phase), signed in as a Pro user with credits and stored
keys (the metering endpoint with a service token), and again with no or forged credentials.
Every response must be no 5xx, a documented status, a documented content type and a body that
matches its schema; invalid input must be rejected and authentication must be enforced.

Requests go in-process through Django's WSGI handler, inside the test's transaction (as with
Django's test client). `/api/llm/messages` is a call of the gateway, which reads and writes on
its own connections and relays on the request's event loop: its signed-in cases go to the
production ASGI app on a live server, with committed data, and its LLM calls to the provider
sandbox. The gateway's own paths (/v1/, /anthropic/, /openai/) are the providers' APIs,
documented by the providers, not in Niyra's schema (tests/routing/gateway/ drives them with the
official SDKs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.config._checks import PositiveDataAcceptanceConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import TokenKind
from accounts.services import api_token_create
from niyra.wsgi import application
from routing.catalog import MODELS, Kind
from sandbox import anthropic_key, openai_key
from tests.routing.conftest import (  # noqa: F401 - fixtures
    _providers_are_the_sandbox,
    client_for,
    live_asgi,
    make_account,
    store_key,
)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators"),
]

SEED = 8  # fixed: CI explores the same requests every run
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    ignored_auth,
]


@schemathesis.check
def well_formed_requests_are_not_called_malformed(ctx: Any, response: Any, case: Any) -> None:
    """Positive data: the API must not refuse a request the schema allows as malformed."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return
    try:
        code = response.json().get("code")
    except ValueError:
        code = None
    if code in MALFORMED_CODES:
        raise AssertionError(f"a request the schema allows was refused as {code}: {response.text[:500]}")


CHECKS.append(well_formed_requests_are_not_called_malformed)
# A request the schema allows may still be refused for what it asks — a domain answer with its
# own code (400 `model_not_supported`, `key_invalid`, `user_not_found`…; 402 not enough credits;
# 409 a conflict; 429 the key-check budget; 503 a provider outage), or who asks (401, 403) or
# what is not there (404) — but never for its form: `well_formed_requests_are_not_called_malformed`.
POSITIVE_STATUSES = ["2xx", "400", "401", "402", "403", "404", "409", "429", "503"]
MALFORMED_CODES = frozenset({"invalid_input", "malformed_json", "unsupported_media_type"})
LLM_PATHS = ("/api/llm/messages",)
CHAT_MODELS = [model.id for model in MODELS if model.kind == Kind.CHAT]
SCHEMA_PATH = "/api/schema/?format=json"
SIGNED_IN_EXAMPLES = 25


def _configured(loaded: Any, *, max_examples: int, coverage: bool) -> Any:
    loaded.config.seed = SEED
    loaded.config.generation.update(max_examples=max_examples, deterministic=True, database="none")
    loaded.config.phases.coverage.enabled = coverage
    loaded.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(expected_statuses=POSITIVE_STATUSES)
    return loaded


def _load(*, max_examples: int, coverage: bool) -> Any:
    return _configured(
        schemathesis.openapi.from_wsgi(SCHEMA_PATH, application), max_examples=max_examples, coverage=coverage
    )


def before_generate_case(context: Any, strategy: Any) -> Any:
    """Valid requests to the LLM routes name a catalog model half the time, so routed calls
    (to the sandbox) run, and not only the "model isn't supported" answer."""
    path = context.operation.path if context.operation else ""
    if path not in LLM_PATHS:
        return strategy

    def with_model(case: Any, model: str | None) -> Any:
        if model and case.meta.generation.mode.is_positive and isinstance(case.body, dict):
            case.body = {**case.body, "model": model}
        return case

    return st.tuples(strategy, st.none() | st.sampled_from(CHAT_MODELS)).map(lambda pair: with_model(*pair))


# Signed in: the coverage phase's boundary and type-confusion cases, then 25 fuzzed examples
# (the LLM routes on the live server: `llm_schema` below).
signed_in_schema = _load(max_examples=SIGNED_IN_EXAMPLES, coverage=True).exclude(path=list(LLM_PATHS))
# Anonymous (or a generated, forged token/session cookie): every request stops at
# authentication, so a few fuzzed examples per operation cover that path.
anonymous_schema = _load(max_examples=8, coverage=False)


# The LLM routes, generated from the same schema and sent over HTTP to the live server.
llm_schema = _configured(
    schemathesis.openapi.from_dict(signed_in_schema.raw_schema), max_examples=SIGNED_IN_EXAMPLES, coverage=True
).include(path=list(LLM_PATHS))
llm_schema.hook(before_generate_case)


@pytest.fixture
def _in_process(settings: Any) -> Iterator[None]:
    """Keep `close_old_connections` from closing the test's connection at each request, as
    Django's test client does, and lift the key save/test throttles (tested on their own) so
    every example reaches the view."""
    rates = {"byok_save": "100000/hour", "byok_test": "100000/hour"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def tokens(make_account: Callable[..., Any], store_key: Callable[..., Any], make_user: Callable[..., Any]) -> Any:  # noqa: F811
    """A Pro user with credits and a stored key for each provider; a metering service token."""
    user = make_account(plan="pro")
    store_key(user, "anthropic", anthropic_key())
    store_key(user, "openai", openai_key())
    robot = make_user("metering@niyra.internal", is_staff=True)
    return {
        "user": api_token_create(user=user, name="schemathesis").plaintext,
        "service": api_token_create(user=robot, name="metering", kind=TokenKind.SERVICE).plaintext,
    }


def _call_and_validate(case: Any, headers: dict[str, str] | None = None) -> None:
    """Each example starts from the same data: its writes (a revoked token, a deleted key) are
    rolled back, so no example changes what the next one sees."""
    with transaction.atomic():
        case.call_and_validate(headers=headers, checks=CHECKS)
        transaction.set_rollback(True)


@signed_in_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # read-only, rolled back per example
@pytest.mark.usefixtures("_in_process")
def test_every_operation_signed_in(case: Any, tokens: Any) -> None:
    token = tokens["service"] if case.path == "/api/usage-events" else tokens["user"]
    _call_and_validate(case, {"Authorization": f"Bearer {token}"})


@llm_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the examples only spend credits
@pytest.mark.django_db(transaction=True)
def test_every_llm_operation_signed_in(
    case: Any,
    tokens: Any,
    live_asgi: str,  # noqa: F811 - the fixture imported above
) -> None:
    case.call_and_validate(base_url=live_asgi, headers={"Authorization": f"Bearer {tokens['user']}"}, checks=CHECKS)


@anonymous_schema.parametrize()
@pytest.mark.usefixtures("_in_process")
def test_every_operation_without_valid_credentials(case: Any) -> None:
    _call_and_validate(case)


# --- What Schemathesis found, kept as plain regression tests ----------------------------------


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/api/credits/ledger", "since"),
        ("/api/credits/ledger", "until"),
        ("/api/credits/ledger", "category"),
        ("/api/credits/ledger", "cursor"),
        ("/api/credits/ledger", "limit"),
        ("/api/credits/usage", "start"),
        ("/api/credits/usage", "end"),
    ],
)
def test_an_empty_query_parameter_is_a_400_not_no_filter(
    url: str,
    param: str,
    make_account: Callable[..., Any],  # noqa: F811
    client_for: Callable[[Any], APIClient],  # noqa: F811
) -> None:
    response = client_for(make_account()).get(url, {param: ""})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_input"
    assert param in response.json()["detail"]


def test_a_ledger_page_size_out_of_range_is_a_400(
    make_account: Callable[..., Any],  # noqa: F811
    client_for: Callable[[Any], APIClient],  # noqa: F811
) -> None:
    client = client_for(make_account())

    for limit in ("0", "201", "ten"):
        response = client.get("/api/credits/ledger", {"limit": limit})
        assert (response.status_code, response.json()["code"]) == (400, "invalid_input"), limit
    assert len(client.get("/api/credits/ledger", {"limit": "1"}).json()["results"]) == 1


@pytest.mark.django_db(transaction=True)  # a call of the gateway, which reads on its own connections
def test_a_temperature_on_an_anthropic_model_is_not_a_provider_outage(
    make_account: Callable[..., Any],  # noqa: F811
    client_for: Callable[[Any], APIClient],  # noqa: F811
) -> None:
    """The Anthropic SDK has no `temperature`; passing it raised TypeError -> a 503."""
    body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}

    response = client_for(make_account()).post("/api/llm/messages", body, format="json")

    assert response.status_code == 200, response.content


def _refuses_blank_and_nul(pattern: str) -> bool:
    """The schema's pattern (ECMA syntax that Python's re reads alike here) takes text with
    something besides spaces, and refuses spaces alone, the empty string and NUL characters."""
    return all(
        (re.search(pattern, text) is not None) == accepted
        for text, accepted in (("x", True), (" x ", True), ("", False), ("   ", False), ("x\x00", False))
    )


def test_the_schema_says_what_the_api_refuses(api_client: APIClient) -> None:
    """The 8 requests Schemathesis found the schema allowed and the API refused."""
    schema = api_client.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]

    for method in ("put", "delete"):
        (provider,) = schema["paths"]["/api/keys/{provider}"][method]["parameters"]
        assert provider["schema"]["enum"] == ["anthropic", "openai"]
    (provider,) = schema["paths"]["/api/keys/{provider}/test"]["post"]["parameters"]
    assert provider["schema"]["enum"] == ["anthropic", "openai"]
    request = components["NativeRequest"]["properties"]
    assert request["model"]["minLength"] == 1 and _refuses_blank_and_nul(request["model"]["pattern"])
    assert request["messages"]["minItems"] == 1
    assert not [path for path in schema["paths"] if path.startswith(("/v1/", "/anthropic/", "/openai/"))]
    assert _refuses_blank_and_nul(components["TokenCreateInput"]["properties"]["name"]["pattern"])
    key = components["ProviderKeyInput"]["properties"]["key"]  # quotes and spaces alone are no key
    pasted = (("sk-ant-x", True), (' "sk-x" ', True), ('""', False), ("\u2018 \u2019", False), ("sk\x00", False))
    assert "oneOf" not in key and all((re.search(key["pattern"], text) is not None) == ok for text, ok in pasted)
    usage_event = components["UsageEventCreateInput"]["properties"]
    assert _refuses_blank_and_nul(usage_event["user"]["pattern"]) and usage_event["idempotency_key"]["minLength"] == 1
    category = usage_event["category"]
    categories = components[category["$ref"].rsplit("/", 1)[-1]] if "$ref" in category else category
    assert "llm" not in categories["enum"] and "embeddings" in categories["enum"]
