"""IDOR matrix: user A can neither read nor change user B's provider keys, OAuth connections,
ledger and usage, routed-call log or API tokens, by any id or provider name, through any REST
endpoint or dashboard view.

The matrix is built from the URL patterns: every route (outside the admin, see
test_admin_permissions.py) that takes an id, a provider or an integration name must have its
attacks listed in ATTACKS, for every method it accepts, or the coverage test fails; the REST
part is cross-checked against the OpenAPI schema. Each attack is sent as A (API token and
session for REST, the browser for the dashboard) with B's ids, and with B's id in bodies and
query strings. Every one must:

* answer 404/403 with the JSON error envelope when it names something of B's (the same answer
  as for an id that does not exist, so it is no existence oracle), or act on A's own rows only
  when the name is a namespace every user has (a provider, an integration);
* change nothing of B's: keys (ciphertext, status, updated_at), connections, pending connect
  requests, tokens, audit rows, billing account, ledger, holds, routed calls, preferences;
* never send the provider a request with B's key or revoke B's grant;
* show none of B's data. So does every page and list endpoint A can GET.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from django.core.cache import cache
from django.db.models import Q, QuerySet
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from accounts.models import ApiToken, AuditEvent, User
from accounts.services import api_token_create, api_token_revoke
from byok.models import Provider, ProviderKey
from byok.services import provider_key_save
from connections.models import OAuthAuthorizationRequest, OAuthConnection
from connections.services import connection_connect_complete, connection_connect_start
from core.crypto import get_keyring
from credits.models import BillingAccount, CreditHold, LedgerEntry
from credits.selectors import billing_account_for, credit_balance
from credits.services.accounts import billing_account_ensure
from credits.services.holds import credit_hold
from credits.services.ledger import credit_charge, credit_grant
from notifications.models import EmailOptOut, Notification
from routing.models import RoutedCall, RoutingPreference
from routing.services import routed_call_record, routing_preference_set
from sandbox import SandboxServer, anthropic_key, openai_key

pytestmark = pytest.mark.django_db

INTEGRATION = "sandbox"
REDIRECT_URI = f"http://testserver/oauth/callback/{INTEGRATION}"
MISSING_ID = 987_654_321  # an id no row has: a foreign id must answer exactly like it


# --- the URL patterns ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    route: str  # the pattern as written, prefixes joined: "api/keys/<slug:provider>"
    name: str  # namespaced: "dashboard:byok-save"
    callback: Any
    params: frozenset[str]

    @property
    def is_api(self) -> bool:
        return self.route.startswith(("api/", "^api/"))

    @property
    def is_admin(self) -> bool:
        return self.route.startswith("admin/")


def all_routes() -> list[Route]:
    """Every URL pattern of the project, with the names of the parameters it captures."""

    def walk(patterns: list[Any], prefix: str, namespace: str) -> Iterator[Route]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}:{pattern.namespace}" if namespace and pattern.namespace else pattern.namespace
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), inner or namespace)
            elif isinstance(pattern, URLPattern):
                name = f"{namespace}:{pattern.name}" if namespace and pattern.name else (pattern.name or "")
                params = frozenset(pattern.pattern.regex.groupindex)
                yield Route(prefix + str(pattern.pattern), name, pattern.callback, params)

    return list(walk(get_resolver().url_patterns, "", ""))


def accepted_methods(route: Route, client: Client | None = None) -> set[str]:
    """The methods a view answers (HEAD and OPTIONS aside). Class-based views say it; function
    views decorated with require_http_methods answer OPTIONS with 405 and an Allow header; a view
    that restricts nothing accepts everything."""
    view_class = getattr(route.callback, "cls", None) or getattr(route.callback, "view_class", None)
    ignored = {"head", "options", "trace"}
    if view_class is not None:
        return {m.upper() for m in view_class.http_method_names if m not in ignored and hasattr(view_class, m)}
    kwargs = dict.fromkeys(route.params, "1")  # fits int, slug and path converters
    response = (client or Client()).options(reverse(route.name, kwargs=kwargs))
    if response.status_code == 405:
        return {m.strip() for m in response["Allow"].split(",")} - {"HEAD", "OPTIONS"}
    return {"GET", "POST", "PUT", "PATCH", "DELETE"}


def id_taking_routes() -> dict[str, Route]:
    return {r.name: r for r in all_routes() if r.params and not r.is_admin}


# --- snapshots: "nothing changed" means equal, ciphertexts and timestamps included ---------------


Snapshot = dict[str, list[dict[str, Any]]]


def _rows(queryset: QuerySet[Any]) -> list[dict[str, Any]]:
    return [
        {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}
        for row in queryset.order_by("pk").values()
    ]


def snapshot(*users: User) -> Snapshot:
    """Every row that belongs to these users, in every table that holds user data."""
    ids = [u.pk for u in users]
    tables: dict[str, QuerySet[Any]] = {
        "users": User.objects.filter(pk__in=ids),
        "keys": ProviderKey.objects.filter(user__in=ids),
        "connections": OAuthConnection.objects.filter(user__in=ids),
        "connect_requests": OAuthAuthorizationRequest.objects.filter(user__in=ids),
        "tokens": ApiToken.objects.filter(user__in=ids),
        "audit": AuditEvent.objects.filter(Q(subject__in=ids) | Q(actor__in=ids)),
        "billing": BillingAccount.objects.filter(user__in=ids),
        "ledger": LedgerEntry.objects.filter(account__user__in=ids),
        "holds": CreditHold.objects.filter(account__user__in=ids),
        "routed_calls": RoutedCall.objects.filter(user__in=ids),
        "preferences": RoutingPreference.objects.filter(user__in=ids),
        "notifications": Notification.objects.filter(user__in=ids),
        "email_opt_outs": EmailOptOut.objects.filter(user__in=ids),
    }
    return {name: _rows(queryset) for name, queryset in tables.items()}


def assert_unchanged(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]], what: str
) -> None:
    for table in before:
        assert after[table] == before[table], f"{what}: {table} changed"


# --- the world: B has one of everything, A has a little ------------------------------------------


def sandbox_integration(settings: Any, sandbox: SandboxServer) -> None:
    settings.ANTHROPIC_BASE_URL = sandbox.anthropic_base_url
    settings.OPENAI_BASE_URL = sandbox.openai_base_url
    base = sandbox.url + "/oauth"
    settings.OAUTH_INTEGRATIONS = {
        INTEGRATION: {
            "label": "Provider sandbox",
            "client_id": "sandbox-app",
            "client_secret": "secret-sandbox-app",
            "authorize_url": f"{base}/authorize",
            "token_url": f"{base}/token",
            "revoke_url": f"{base}/revoke",
            "scopes": ["profile", "email"],
        }
    }


def consent(user: User) -> dict[str, str]:
    """Start connecting and pass the sandbox's consent screen: the callback's query (not sent)."""
    url = connection_connect_start(user=user, integration=INTEGRATION, redirect_uri=REDIRECT_URI)
    response = httpx2.get(url, follow_redirects=False)
    assert response.status_code == 302, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def connect(user: User) -> OAuthConnection:
    query = consent(user)
    return connection_connect_complete(user=user, integration=INTEGRATION, state=query["state"], code=query["code"])


def make_pro(make_user: Callable[..., Any], email: str, credits_mc: int) -> User:
    user: User = make_user(email)
    BillingAccount.objects.filter(pk=billing_account_ensure(user=user).pk).update(plan="pro")
    credit_grant(user=user, amount=credits_mc, reason=f"welcome {email}", idempotency_key=f"welcome-{email}")
    return user


@dataclass
class World:
    a: User
    b: User
    a_token: str
    b_account_id: int
    b_keys: dict[str, str]  # provider -> plaintext
    b_token: ApiToken
    b_token_plaintext: str
    b_revoked_token: ApiToken
    b_pending: dict[str, str]  # B's consent (state, code) that B's browser has not brought back yet
    b_call_id: uuid.UUID  # one of B's routed calls (its receipt is B's)
    markers: list[str] = field(default_factory=list)  # strings only B's data contains


@pytest.fixture
def world(make_user: Callable[..., Any], settings: Any, sandbox: SandboxServer) -> Iterator[World]:
    sandbox_integration(settings, sandbox)
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"byok_save": "1000/hour", "byok_test": "1000/hour"},
    }
    cache.clear()
    a = make_pro(make_user, "alice@example.com", 5_000_000)
    b = make_pro(make_user, "bob-the-target@example.com", 7_654_321)
    provider_key_save(user=a, provider="anthropic", key=anthropic_key())

    b_keys = {"anthropic": anthropic_key(), "openai": openai_key()}
    for provider, key in b_keys.items():
        provider_key_save(user=b, provider=provider, key=key)
    b_connection = connect(b)
    b_pending = consent(b)
    b_token = api_token_create(user=b, name="bob-laptop-7f3a")
    b_revoked = api_token_create(user=b, name="bob-old-9c1d")
    api_token_revoke(user=b, token_id=b_revoked.token.pk)
    credit_charge(user=b, category="tool_call", units=3, idempotency_key="bob-charge-idem-4b7")
    credit_hold(user=b, amount=1_234, idempotency_key="bob-hold-idem-8d1")
    call = routed_call_record(
        call_id=uuid.uuid4(),
        user=b,
        model="claude-haiku-4-5",
        provider="anthropic",
        kind="chat",
        key_source="byok",
        stream=False,
        tokens_in=98_765,
        tokens_out=43_210,
        tokens_cached=0,
        credits_charged=0,
        latency_ms=321,
        outcome="ok",
    )
    routing_preference_set(user=b, fallback_to_credits=True)

    keyring = get_keyring()
    b_connection.refresh_from_db()
    access = keyring.decrypt(b_connection.access_token_ciphertext, purpose=b_connection.access_token_purpose)
    balance = credit_balance(user=b)
    markers = [
        b.email,
        "bob-the-target",
        *b_keys.values(),
        *(k[-12:] for k in b_keys.values()),
        *ProviderKey.objects.filter(user=b).values_list("hint", flat=True),
        *ProviderKey.objects.filter(user=b).values_list("fingerprint", flat=True),
        f"niy_{b_token.token.prefix}",
        b_token.plaintext,
        "bob-laptop-7f3a",
        "bob-old-9c1d",
        "bob-charge-idem-4b7",
        "bob-hold-idem-8d1",
        str(call.id),
        "98765",
        "98,765",
        "43210",
        "43,210",
        str(balance.balance),
        str(balance.available),
        access,
        b_pending["state"],
        b_pending["code"],
    ]
    world = World(
        a=a,
        b=b,
        a_token=api_token_create(user=a, name="alice-cli").plaintext,
        b_account_id=billing_account_for(user=b).pk,
        b_keys=b_keys,
        b_token=b_token.token,
        b_token_plaintext=b_token.plaintext,
        b_revoked_token=b_revoked.token,
        b_pending=b_pending,
        b_call_id=call.id,
        markers=markers,
    )
    yield world
    cache.clear()


def assert_no_b_data(world: World, response: Any, what: str) -> None:
    text = response.content.decode(errors="replace") if not getattr(response, "streaming", False) else ""
    text += " ".join(f"{k}: {v}" for k, v in response.items())
    leaked = [m for m in world.markers if m in text]
    assert not leaked, f"{what} shows B's data: {leaked}"


# --- the attacks --------------------------------------------------------------------------------

API_ERROR_KEYS = {"code", "message", "detail"}


@dataclass(frozen=True)
class Attack:
    method: str
    kwargs: dict[str, Any]  # for reverse()
    data: dict[str, Any] | None = None
    query: str = ""
    htmx: bool = False
    # "denied": names something of B's: 403/404 (an error envelope on the API), as for a missing id.
    # "own": a name every user has (provider, integration): may only touch A's rows.
    outcome: str = "denied"
    codes: tuple[str, ...] = ()  # API error codes accepted for a denial
    status: tuple[int, ...] = (403, 404)
    missing_kwargs: dict[str, Any] | None = None  # the same request for a row that doesn't exist


def _b_ids(world: World) -> str:
    return f"user={world.b.pk}&user_id={world.b.pk}&account={world.b_account_id}"


def _mass_assign(world: World) -> dict[str, Any]:
    return {"user": world.b.pk, "user_id": world.b.pk, "owner": world.b.email}


def _token_attacks(world: World, methods: tuple[str, ...], **extra: Any) -> list[Attack]:
    return [
        Attack(method, {"token_id": token.pk}, missing_kwargs={"token_id": MISSING_ID}, **extra)
        for token in (world.b_token, world.b_revoked_token)
        for method in methods
    ]


def _provider_attacks(world: World, method: str, **extra: Any) -> list[Attack]:
    return [
        Attack(method, {"provider": provider}, query=_b_ids(world), outcome="own", **extra)
        for provider in Provider.values
    ]


ATTACKS: dict[str, Callable[[World], list[Attack]]] = {
    # REST
    "api-token-revoke": lambda w: _token_attacks(w, ("DELETE",), codes=("not_found",), status=(404,)),
    "api-provider-key": lambda w: [
        *_provider_attacks(w, "DELETE"),
        *(
            Attack("PUT", {"provider": p}, data={"key": k, **_mass_assign(w)}, query=_b_ids(w), outcome="own")
            for p, k in (("openai", openai_key()), ("anthropic", anthropic_key()))
        ),
    ],
    "api-provider-key-test": lambda w: _provider_attacks(w, "POST"),
    "llm-call": lambda w: [
        Attack("GET", {"call_id": w.b_call_id}, missing_kwargs={"call_id": uuid.uuid4()}, codes=("not_found",))
    ],
    "api-oauth-connection": lambda w: [
        Attack("DELETE", {"integration": INTEGRATION}, query=_b_ids(w), outcome="own"),
        Attack(
            "DELETE",
            {"integration": "unknown-integration"},
            codes=("oauth_connection_not_found", "oauth_integration_unknown"),
            status=(404,),
        ),
    ],
    "api-oauth-connection-connect": lambda w: [
        Attack("POST", {"integration": INTEGRATION}, data=_mass_assign(w), query=_b_ids(w), outcome="own"),
    ],
    # Dashboard
    "dashboard:token-revoke": lambda w: [
        *_token_attacks(w, ("GET", "POST"), status=(404,)),
        *_token_attacks(w, ("GET", "POST"), status=(404,), htmx=True),
    ],
    "dashboard:byok-save": lambda w: [
        Attack("POST", {"provider": p}, data={"key": k, **_mass_assign(w)}, outcome="own", htmx=htmx)
        for p, k in (("openai", openai_key()), ("anthropic", anthropic_key()))
        for htmx in (False, True)
    ],
    "dashboard:byok-test": lambda w: [a for htmx in (False, True) for a in _provider_attacks(w, "POST", htmx=htmx)],
    "dashboard:byok-disconnect": lambda w: [
        a for htmx in (False, True) for m in ("GET", "POST") for a in _provider_attacks(w, m, htmx=htmx)
    ],
    "dashboard:connection-connect": lambda w: [
        Attack("POST", {"integration": INTEGRATION}, data=_mass_assign(w), outcome="own", htmx=htmx)
        for htmx in (False, True)
    ],
    "dashboard:connection-disconnect": lambda w: [
        Attack(m, {"integration": INTEGRATION}, data=_mass_assign(w) if m == "POST" else None, outcome="own", htmx=h)
        for h in (False, True)
        for m in ("GET", "POST")
    ],
    # B's consent brought back by A's browser (a login-CSRF or a leaked link): refused, B's pending
    # request stays usable by B. A browser redirect, so the answer is a redirect with a message.
    "oauth-callback": lambda w: [
        Attack(
            "GET",
            {"integration": INTEGRATION},
            query=f"state={w.b_pending['state']}&code={w.b_pending['code']}",
            status=(302,),
        ),
    ],
}


def _send(client: Client, attack: Attack, url: str) -> Any:
    extra: dict[str, Any] = {"HTTP_HX_REQUEST": "true"} if attack.htmx else {}
    if attack.method == "GET":
        return client.get(url, **extra)
    if isinstance(client, APIClient):
        body = json.dumps(attack.data or {})
        return client.generic(attack.method, url, data=body, content_type="application/json", **extra)
    return getattr(client, attack.method.lower())(url, attack.data or {}, **extra)


def _clients(world: World, route: Route) -> dict[str, Client]:
    if route.is_api:
        by_token = APIClient()
        by_token.credentials(HTTP_AUTHORIZATION=f"Bearer {world.a_token}")
        by_session = APIClient()
        by_session.force_login(world.a)
        return {"token": by_token, "session": by_session}
    browser = Client()
    browser.force_login(world.a)
    return {"browser": browser}


def _comparable(response: Any) -> tuple[int, str]:
    """Status and body, minus what differs per render (CSRF tokens, form submission ids)."""
    body = response.content.decode(errors="replace")
    body = re.sub(r'(csrfmiddlewaretoken" value=|X-CSRFToken": )"[^"]+"', r"\1", body)
    body = re.sub(r'name="submission" value="[0-9a-f]+"', "", body)
    return response.status_code, body


# --- the tests ----------------------------------------------------------------------------------


def test_every_route_that_takes_an_id_or_a_name_is_in_the_matrix_for_every_method() -> None:
    routes = id_taking_routes()

    assert set(routes) == set(ATTACKS), "a route takes an id/name but has no IDOR attacks (or one was removed)"
    ids_only = World(  # the attacks need B's ids only to fill in URLs: enough to list their methods
        a=User(pk=1),
        b=User(pk=2),
        a_token="",
        b_account_id=3,
        b_keys={},
        b_token=ApiToken(pk=4),
        b_token_plaintext="",
        b_revoked_token=ApiToken(pk=5),
        b_pending={"state": "s", "code": "c"},
        b_call_id=uuid.uuid4(),
    )
    for name, route in routes.items():
        attacked = {attack.method for attack in ATTACKS[name](ids_only)}
        accepted = accepted_methods(route)
        assert attacked == accepted, f"{name}: attacked {sorted(attacked)}, accepts {sorted(accepted)}"


def test_the_openapi_schema_has_no_id_taking_path_the_matrix_misses() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    templated = {path for path in schema["paths"] if "{" in path}
    api_routes = {
        "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route.route): name
        for name, route in id_taking_routes().items()
        if route.is_api
    }

    assert templated == set(api_routes)
    assert set(api_routes.values()) <= set(ATTACKS)


def test_a_cannot_reach_b_through_any_id_taking_route(world: World, sandbox: SandboxServer) -> None:
    routes = id_taking_routes()
    b_before = snapshot(world.b)
    b_key_calls = {p: sandbox.log.count(key=k) for p, k in world.b_keys.items()}
    revocations = sandbox.log.count(path="/oauth/revoke")
    attacked: set[str] = set()

    for name, make_attacks in ATTACKS.items():
        route = routes[name]
        for attack in make_attacks(world):
            for client_name, client in _clients(world, route).items():
                url = reverse(name, kwargs=attack.kwargs) + (f"?{attack.query}" if attack.query else "")
                what = f"{attack.method} {url} ({client_name}{', htmx' if attack.htmx else ''})"
                response = _send(client, attack, url)
                attacked.add(name)

                assert response.status_code < 500, what
                assert_unchanged(b_before, snapshot(world.b), what)
                assert_no_b_data(world, response, what)
                if attack.outcome == "denied":
                    assert response.status_code in attack.status, f"{what}: {response.status_code}"
                    if route.is_api:
                        body = response.json()
                        assert set(body) == API_ERROR_KEYS and body["code"] in attack.codes, what
                if attack.missing_kwargs is not None:
                    missing_url = reverse(name, kwargs=attack.missing_kwargs)
                    missing = _send(client, attack, missing_url)
                    assert _comparable(missing) == _comparable(response), f"{what}: differs from a missing id"

    assert attacked == set(routes)
    # The "own" requests did act, on A's rows only; B's consent connected nobody.
    assert AuditEvent.objects.filter(subject=world.a, actor=world.a, event="provider_key.added").exists()
    assert not OAuthConnection.objects.filter(user=world.a).exists()
    assert {p: sandbox.log.count(key=k) for p, k in world.b_keys.items()} == b_key_calls  # B's keys never used
    assert sandbox.log.count(path="/oauth/revoke") == revocations  # B's grant never revoked
    # And B can still use all of it: the token, the keys, the consent A tried to bring back.
    b_client = APIClient()
    b_client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.b_token_plaintext}")
    assert b_client.get("/api/me").json()["email"] == world.b.email
    assert {k["provider"] for k in b_client.get("/api/keys").json()} == set(world.b_keys)
    connection_connect_complete(
        user=world.b, integration=INTEGRATION, state=world.b_pending["state"], code=world.b_pending["code"]
    )


# The same for every user (and the schema takes seconds to generate): no user data to look for.
STATIC_DOCUMENTS = {"api-schema", "api-docs"}


def _get_routes() -> list[Route]:
    """Every route without parameters that answers GET (pages, lists, exports)."""
    routes = []
    for route in all_routes():
        if route.params or route.is_admin or not route.name or route.name in STATIC_DOCUMENTS:
            continue
        if "GET" in accepted_methods(route):
            routes.append(route)
    return routes


def test_no_page_or_list_a_can_get_shows_b_data(world: World) -> None:
    routes = _get_routes()
    names = {r.name for r in routes}
    assert {
        "api-provider-key-list",
        "api-token-list",
        "api-credits-ledger",
        "api-credits-usage",
        "dashboard:home",
    } <= names
    queries = ("", f"?{_b_ids(world)}&category=tool_call&since=2000-01-01T00:00:00Z")

    for route in routes:
        for client_name, client in _clients(world, route).items():
            for query in queries:
                url = reverse(route.name) + query
                headers: dict[str, Any] = {"HTTP_HX_REQUEST": "true"} if not route.is_api and query else {}
                response = client.get(url, **headers)
                what = f"GET {url} ({client_name})"
                assert response.status_code < 500, what
                assert_no_b_data(world, response, what)


def test_ids_in_bodies_reach_no_other_user(world: World) -> None:
    """The one endpoint whose body names a user (metering) takes service tokens only."""
    before = snapshot(world.b)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.a_token}")
    for reference in (str(world.b.pk), world.b.email):
        response = client.post(
            "/api/usage-events",
            {"user": reference, "category": "tool_call", "units": 1, "idempotency_key": f"steal-{reference}"},
            format="json",
        )
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
    assert_unchanged(before, snapshot(world.b), "usage event for B")
