"""One routed call, from the caller to the settled bill (docs/gateway.md, "One call, step by step").

`Exchange` is the request as the ASGI app read it and the way back to the client. `serve` runs
a call on a provider surface: the model and credential are chosen, credits held (platform key),
the request forwarded as sent, the answer relayed as received while its usage is read, and the
call closed (settled, voided or recorded) before the last byte goes out, so a client that has
its answer can rely on the books. A BYOK call refused as rate limited or out of quota, before
any byte went out, is retried once on credits when the user opted in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from byok.health import routed_observation_is_news
from byok.models import KeyStatus
from byok.selectors import provider_key_plaintext
from byok.services import provider_key_mark_needs_reentry, provider_key_observe
from core import errors
from core.errors import NiyraError
from core.logging import log_context
from credits.models import CreditHold, KeySource
from credits.pricing import Usage
from providers import Provider
from providers.errors import ProviderFailure, provider_failure, retry_after_seconds
from routing.catalog import CatalogModel, Kind, resolve
from routing.credentials import Credential, credential_decide
from routing.gateway import ledger, metering, metrics, translate, upstream
from routing.gateway.auth import Caller, caller_authenticate
from routing.gateway.errors import Shape, error_bytes, provider_error_message, with_niyra_message
from routing.gateway.metering import Surface

logger = logging.getLogger("routing.gateway")

FALLBACK_FAILURES = frozenset({ProviderFailure.RATE_LIMITED, ProviderFailure.QUOTA})
JSON = b"application/json"
SSE = b"text/event-stream; charset=utf-8"
MAX_FORWARDED_ERROR_BYTES = 64 * 1024
OUTCOME_OK = "ok"
OUTCOME_DISCONNECTED = "client_disconnected"
OUTCOME_CUT = "stream_cut"
OUTCOME_CANCELLED = "cancelled"  # the server cut the call before it had an answer (a deploy's grace ran out)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

# The calls of this process opened and not yet closed, with the task running each: a server
# shutting down cuts them and waits for their books (`routes_closed`) before it exits.
_OPEN_ROUTES: dict[uuid.UUID, asyncio.Task[Any] | None] = {}


@dataclass(slots=True)
class Exchange:
    """A request read by the ASGI app, and the client to answer."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    send: Send
    receive: Receive
    started: bool = False
    route: Route | None = None  # the call served, once there is one (its receipt once closed)
    # Times (time.monotonic()) for the metrics: the request's arrival, the seconds spent waiting
    # on the provider (the rest is Niyra's added latency), and when the first byte went out.
    arrived: float = field(default_factory=time.monotonic)
    provider_wait: float = 0.0
    first_byte: float | None = None

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = JSON,
        headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    ) -> None:
        await self.start(status, content_type=content_type, headers=headers)
        await self.send({"type": "http.response.body", "body": body})

    async def start(self, status: int, *, content_type: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
        self.started = True
        self.first_byte = time.monotonic()
        base = [(b"content-type", content_type)] + [h for h in headers if h[0] != b"content-type"]
        await self.send({"type": "http.response.start", "status": status, "headers": base})

    @contextlib.contextmanager
    def provider_waited(self) -> Iterator[None]:
        """The time spent in the block is the provider's (not Niyra's added latency)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.provider_wait += time.monotonic() - started

    async def error(self, exc: NiyraError, shape: Shape) -> None:
        if self.route is None:
            metrics.refused(exc.code)
        headers = [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
        await self.respond(exc.status, error_bytes(exc, shape), headers=headers)

    def token(self) -> str | None:
        """The Niyra API token, sent the way the client's SDK sends its key."""
        auth = self.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        key = self.headers.get("x-api-key", "").strip()
        return key or None


async def authenticate(exchange: Exchange) -> Caller:
    token = exchange.token()
    if token is None:
        raise NiyraError(errors.NOT_AUTHENTICATED)
    caller = await caller_authenticate(token)
    if caller is None:
        raise NiyraError(errors.AUTHENTICATION_FAILED)
    return caller


def json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NiyraError(errors.MALFORMED_JSON) from None
    if not isinstance(payload, dict):
        raise NiyraError(errors.INVALID_INPUT, detail={"non_field_errors": ["Send a JSON object."]})
    return payload


def model_for(payload: Mapping[str, Any], *, provider: Provider | None, kinds: frozenset[Kind]) -> CatalogModel:
    """The catalog model the request names, checked against the surface it came to."""
    model = resolve(payload.get("model"))
    if provider is not None and model.provider != provider:
        raise NiyraError(
            errors.MODEL_NOT_SUPPORTED,
            message=f"{model.id} is a {model.provider.label} model: call it through /{model.provider}/v1 or /v1.",
            detail={"model": model.id, "param": "model"},
        )
    if model.kind not in kinds:
        raise NiyraError(
            errors.MODEL_NOT_SUPPORTED,
            message=f"{model.id} can't be called on this endpoint.",
            detail={"model": model.id, "param": "model"},
        )
    return model


@dataclass(slots=True)
class Route:
    """An open routed call. Holds no secret: the key is a separate local of the caller."""

    call_id: uuid.UUID
    caller: Caller
    model: CatalogModel
    surface: Surface
    key_source: KeySource
    started: float
    hold: CreditHold | None = None
    key_fingerprint: str | None = None
    key_status: str | None = None  # the user's key as the snapshot knows it (BYOK only)
    key_limited_until: datetime | None = None
    fallback_allowed: bool = False
    fell_back: bool = False
    cap_hold: ledger.CapHold | None = None  # a fallback's take from the user's daily cap
    stream: bool = False
    outcome: str | None = None  # set when the call is closed
    receipt: ledger.CallReceipt | None = None

    def receipt_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-niyra-call-id", str(self.call_id).encode()), (b"x-niyra-key-source", self.key_source.encode())]

    def receipt_totals(self) -> list[tuple[bytes, bytes]]:
        """The closed call's money, for an answer whose headers go out after the close."""
        receipt = self.receipt
        if receipt is None:
            return []
        headers = [(b"x-niyra-credits-charged", str(receipt.credits_charged).encode())]
        if receipt.balance_after is not None:
            headers.append((b"x-niyra-balance-after", str(receipt.balance_after).encode()))
        if self.key_source == KeySource.BYOK:
            headers.append((b"x-niyra-credits-would-cost", str(receipt.would_cost).encode()))
        return headers

    def receipt_body(self) -> dict[str, Any]:
        """The closed call's receipt as the `niyra` object of a JSON answer on Niyra's own
        surface (the OpenAI SDK keeps unknown top-level fields: `completion.niyra`)."""
        receipt = self.receipt
        return {
            "call_id": str(self.call_id),
            "key_source": str(self.key_source),
            "fell_back": self.fell_back,
            "credits_charged_mc": receipt.credits_charged if receipt is not None else 0,
            "balance_after_mc": receipt.balance_after if receipt is not None else None,
            "credits_would_cost_mc": (
                receipt.would_cost if receipt is not None and self.key_source == KeySource.BYOK else None
            ),
        }


@sensitive_variables("api_key")
async def credential_open(caller: Caller, model: CatalogModel, *, platform_only: bool) -> tuple[Credential, str]:
    """The credential for a call of `model` and its key: the user's (decrypted for this call)
    or Niyra's. A saved key that no longer opens is recorded for the user to paste again."""
    credential = credential_decide(model=model, snapshot=caller.snapshot, platform_only=platform_only)
    provider_key = credential.provider_key
    if provider_key is None:
        return credential, upstream.platform_key(model.provider)
    try:
        return credential, provider_key_plaintext(provider_key)
    except NiyraError:
        await sync_to_async(_key_needs_reentry)(
            user_id=caller.user_id, provider=model.provider, fingerprint=provider_key.fingerprint
        )
        raise


@sensitive_variables("api_key")
async def route_open(
    caller: Caller, model: CatalogModel, surface: Surface, worst: Usage, *, platform_only: bool, stream: bool
) -> tuple[Route, str]:
    """The credential for this call, and credits held when they pay for it."""
    credential, api_key = await credential_open(caller, model, platform_only=platform_only)
    route = _route_new(caller, model, surface, credential, stream=stream)
    if credential.provider_key is not None:
        route.key_fingerprint = credential.provider_key.fingerprint
        route.key_status = credential.provider_key.status
        route.key_limited_until = credential.provider_key.rate_limited_until
        route.fallback_allowed = credential.fallback_allowed
    else:
        route.hold = await ledger.hold_open(caller=caller, call_id=route.call_id, model=model, worst=worst)
    _OPEN_ROUTES[route.call_id] = asyncio.current_task()
    return route, api_key


@sensitive_variables("api_key")
async def route_fallback_open(
    caller: Caller, model: CatalogModel, surface: Surface, worst: Usage, *, stream: bool
) -> tuple[Route, str] | None:
    """The retry on credits of a BYOK call its key refused, with credits held — or None when
    the user's daily fallback cap can't take the hold (their key's error then stands). The hold
    is taken from the cap first (one statement, only on this rare path) and given back whole if
    the credits hold is refused."""
    credential, api_key = await credential_open(caller, model, platform_only=True)
    route = _route_new(caller, model, surface, credential, stream=stream)
    route.fell_back = True
    draft = ledger.call_hold_draft(call_id=route.call_id, model=model, worst=worst)
    cap = caller.snapshot.fallback_daily_cap_mc
    if cap is not None:
        route.cap_hold = await ledger.fallback_take(
            user_id=caller.user_id, amount=draft.amount, cap=cap, now=timezone.now()
        )
        if route.cap_hold is None:
            logger.info("fallback of user %s refused: the daily cap can't take %d mc", caller.user_id, draft.amount)
            return None
    try:
        route.hold = await ledger.hold_open(caller=caller, call_id=route.call_id, model=model, worst=worst, draft=draft)
    except BaseException:
        if route.cap_hold is not None:
            await asyncio.shield(ledger.fallback_give_back(user_id=caller.user_id, cap_hold=route.cap_hold))
        raise
    _OPEN_ROUTES[route.call_id] = asyncio.current_task()
    return route, api_key


def _route_new(caller: Caller, model: CatalogModel, surface: Surface, credential: Credential, *, stream: bool) -> Route:
    return Route(
        call_id=uuid.uuid4(),
        caller=caller,
        model=model,
        surface=surface,
        key_source=credential.key_source,
        started=time.monotonic(),
        stream=stream,
    )


def _key_needs_reentry(*, user_id: int, provider: str, fingerprint: str) -> None:
    user = User.objects.filter(pk=user_id).first()
    if user is not None:
        provider_key_mark_needs_reentry(user=user, provider=provider, fingerprint=fingerprint)


async def route_close(route: Route, *, usage: Usage, charge: bool, outcome: str) -> ledger.CallReceipt:
    """Write the call's books (shielded: a call cancelled while they are written still writes
    them, and a shutting-down server waits for that)."""
    route.outcome = outcome
    metrics.call_closed(
        surface=route.surface,
        provider=route.model.provider,
        model=route.model.id,
        key_source=route.key_source,
        outcome=outcome,
        usage=usage,
    )
    route.receipt = await asyncio.shield(
        _books_write(
            route.call_id,
            ledger.CallClose(
                call_id=route.call_id,
                user_id=route.caller.user_id,
                model=route.model,
                surface=str(route.surface),
                key_source=route.key_source,
                hold=route.hold,
                usage=usage,
                charge=charge,
                outcome=outcome,
                stream=route.stream,
                fell_back=route.fell_back,
                latency_ms=int((time.monotonic() - route.started) * 1000),
                key_fingerprint=route.key_fingerprint,
                cap_hold=route.cap_hold,
            ),
        )
    )
    return route.receipt


async def _books_write(call_id: uuid.UUID, close: ledger.CallClose) -> ledger.CallReceipt:
    try:
        return await ledger.call_close(close)
    finally:
        _OPEN_ROUTES.pop(call_id, None)


async def routes_closed(*, timeout: float) -> None:
    """At shutdown, once the server's grace is over: cut the calls still running and wait
    (bounded) until every call of this process has written its books. The server cancels the
    requests it runs, which cuts their calls, but not a task a request started: Django's views
    run the gateway in process (`local`), in a task of the view's own."""
    loop = asyncio.get_running_loop()
    for task in list(_OPEN_ROUTES.values()):
        if task is not None and task.get_loop() is loop:
            task.cancel()
    deadline = time.monotonic() + timeout
    while _OPEN_ROUTES and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if _OPEN_ROUTES:
        logger.error("shutting down with %d routed calls not closed (their holds expire)", len(_OPEN_ROUTES))


@dataclass(slots=True)
class Refusal:
    """A provider's error answer, read in full, and what it means."""

    status: int
    body: bytes
    payload: object
    failure: ProviderFailure
    headers: list[tuple[bytes, bytes]]
    retry_after: int | None

    @classmethod
    async def read(cls, answer: upstream.Upstream, provider: Provider) -> Refusal:
        body = (await answer.read())[:MAX_FORWARDED_ERROR_BYTES]
        try:
            payload: object = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        kind, code, message = provider_error_message(payload)
        failure = provider_failure(
            provider=provider, status=answer.status, error_type=kind, error_code=code, message=message
        )
        return cls(
            status=answer.status,
            body=body,
            payload=payload,
            failure=failure,
            headers=answer.relayed_headers(),
            retry_after=retry_after_seconds(answer.response.headers),
        )

    @property
    def outcome(self) -> str:
        return {
            ProviderFailure.KEY_INVALID: errors.KEY_REJECTED.code,
            ProviderFailure.QUOTA: errors.KEY_QUOTA_EXHAUSTED.code,
            ProviderFailure.RATE_LIMITED: errors.KEY_RATE_LIMITED.code,
            ProviderFailure.UNAVAILABLE: errors.PROVIDER_UNAVAILABLE.code,
        }.get(self.failure, f"provider_{self.status}")


@dataclass(slots=True)
class Plan:
    """How one surface's call is made: where it goes, and how its answer is read."""

    surface: Surface
    shape: Shape
    path: str  # the provider's path under its /v1
    body: bytes  # what goes upstream
    payload: dict[str, Any]  # the request as the client sent it (what metering reads)
    model: CatalogModel
    stream: bool
    content_type: str = "application/json"
    platform_only: bool = False
    hide_usage_chunk: bool = False  # Niyra asked for the usage chunk; the client did not
    translator: Callable[[], translate.AnthropicChatStream] | None = None  # the universal surface
    translate_json: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    translate_error: bool = False  # an Anthropic error answered on the OpenAI-shaped surface
    raw_relay: bool = False  # audio: relayed in chunks, not read as JSON or SSE
    # Niyra's own surface (/v1): a stream that breaks after it started says so in the stream,
    # in OpenAI's shape. The providers' surfaces relay what the provider sent, nothing invented.
    in_stream_errors: bool = False
    # Niyra's own surface (/v1) also puts the receipt in a JSON answer's body (`niyra`).
    body_receipt: bool = False
    worst: Usage = field(default_factory=Usage)


async def serve(exchange: Exchange, caller: Caller, plan: Plan) -> None:
    """Run the call `plan` describes for `caller`, and answer the client. What the provider
    said about the user's key, when it contradicts the snapshot, is recorded once the client
    has its answer (`key_observe`)."""
    route, api_key = await route_open(
        caller, plan.model, plan.surface, plan.worst, platform_only=plan.platform_only, stream=plan.stream
    )
    _route_started(exchange, route)
    byok_route = route if route.key_source == KeySource.BYOK else None
    observation: KeyObservation | None = None
    try:
        while True:
            answer = await _send_upstream(exchange, plan, route, api_key)
            del api_key
            if answer is None:
                return
            if route is byok_route:
                observation = key_observation(route, answer if isinstance(answer, Refusal) else None)
            if isinstance(answer, Refusal):
                if (
                    route.key_source == KeySource.BYOK
                    and route.fallback_allowed
                    and answer.failure in FALLBACK_FAILURES
                ):
                    try:
                        fallback = await route_fallback_open(
                            caller, plan.model, plan.surface, plan.worst, stream=plan.stream
                        )
                    except NiyraError:  # e.g. too few credits: said instead of the key's error
                        await route_close(route, usage=Usage(), charge=False, outcome=answer.outcome)
                        raise
                    if fallback is not None:
                        await route_close(route, usage=Usage(), charge=False, outcome=answer.outcome)
                        route, api_key = fallback
                        _route_started(exchange, route)
                        continue
                await _refuse(exchange, plan, route, answer)
                return
            if plan.raw_relay:
                await _relay_raw(exchange, plan, route, answer)
            elif plan.stream:
                await _relay_stream(exchange, plan, route, answer)
            else:
                await _relay_json(exchange, plan, route, answer)
            return
    except BaseException as exc:
        if route.outcome is None:  # not closed: no hold is left for the sweeper; a failure costs nothing
            # Cancelled: the server cut the call before it had an answer (a deploy's grace ran
            # out). A stream that had started was closed by its relay, for what it relayed.
            cancelled = isinstance(exc, asyncio.CancelledError)
            outcome = OUTCOME_CANCELLED if cancelled else errors.INTERNAL_ERROR.code
            await route_close(route, usage=Usage(), charge=False, outcome=outcome)
        raise
    finally:
        _route_timed(exchange, route)
        if byok_route is not None and observation is not None:
            await asyncio.shield(key_observe(byok_route, observation))


def _route_started(exchange: Exchange, route: Route) -> None:
    exchange.route = route
    context = log_context()
    if context is not None:  # the request's log line, and every line logged for it, name the call
        context.call_id = str(route.call_id)
        context.user_id = route.caller.user_id


def _route_timed(exchange: Exchange, route: Route) -> None:
    """Record the call's times once its last byte went out (or it failed)."""
    now = time.monotonic()
    metrics.call_timed(
        surface=route.surface,
        provider=route.model.provider,
        key_source=route.key_source,
        stream=route.stream,
        total=now - exchange.arrived,
        provider_wait=exchange.provider_wait,
        first_byte=None if exchange.first_byte is None else exchange.first_byte - exchange.arrived,
    )


@dataclass(frozen=True, slots=True)
class KeyObservation:
    """What a call through the user's key said about it (`byok.services.provider_key_observe`)."""

    observation: str  # "ok", "invalid", "rate_limited", "quota_exhausted"
    retry_after_seconds: float | None = None


OBSERVED_FAILURES = {
    ProviderFailure.KEY_INVALID: ("invalid", KeyStatus.INVALID),
    ProviderFailure.RATE_LIMITED: ("rate_limited", KeyStatus.RATE_LIMITED),
    ProviderFailure.QUOTA: ("quota_exhausted", KeyStatus.QUOTA_EXHAUSTED),
}


def key_observation(route: Route, refusal: Refusal | None) -> KeyObservation | None:
    """What to record about the user's key after this answer (``refusal`` None: the provider
    accepted the call) — None when it is no news against the snapshot (byok's one rule,
    `routed_observation_is_news`), so a call that only confirms what is known costs no hop."""
    if refusal is None:
        observation, status = "ok", KeyStatus.VALID
    elif refusal.failure in OBSERVED_FAILURES:
        observation, status = OBSERVED_FAILURES[refusal.failure]
    else:
        return None
    known = route.key_status or ""
    if not routed_observation_is_news(observed=status, known=known, limited_until=route.key_limited_until):
        return None
    if status != KeyStatus.RATE_LIMITED or refusal is None or refusal.retry_after is None:
        return KeyObservation(observation)
    return KeyObservation(observation, float(refusal.retry_after))


async def key_observe(route: Route, seen: KeyObservation) -> None:
    """Record the observation (a thread hop to byok's service, which writes only a real change
    and notifies the user). A failure to record is logged: the call's answer stands."""
    try:
        await ledger.in_thread(
            provider_key_observe,
            user_id=route.caller.user_id,
            provider=str(route.model.provider),
            fingerprint=route.key_fingerprint or "",
            observation=seen.observation,
            retry_after_seconds=seen.retry_after_seconds,
        )
    except Exception:
        logger.exception("call %s: the key observation %r was not recorded", route.call_id, seen.observation)


@sensitive_variables("api_key")
async def _send_upstream(
    exchange: Exchange, plan: Plan, route: Route, api_key: str
) -> upstream.Upstream | Refusal | None:
    """The provider's answer once its status is known: the answer to relay, a refusal, or None
    when the provider could not be reached (the client has been told; the call is closed)."""
    provider = plan.model.provider
    headers = upstream.request_headers(
        provider,
        api_key=api_key,
        client_headers=exchange.headers,
        content_type=plan.content_type,
        byok=route.key_source == KeySource.BYOK,
    )
    try:
        with exchange.provider_waited():
            answer = await upstream.send(provider, plan.path, body=plan.body, headers=headers, stream=plan.stream)
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("provider %s unreachable for call %s (%s)", provider, route.call_id, type(exc).__name__)
        await route_close(route, usage=Usage(), charge=False, outcome=errors.PROVIDER_UNAVAILABLE.code)
        await exchange.error(NiyraError(errors.PROVIDER_UNAVAILABLE, detail={"provider": provider}), plan.shape)
        return None
    if answer.status >= 400:
        with exchange.provider_waited():
            return await Refusal.read(answer, provider)
    return answer


async def _refuse(exchange: Exchange, plan: Plan, route: Route, refusal: Refusal) -> None:
    """Tell the client why the provider refused, in the provider's status and shape."""
    provider = plan.model.provider
    byok = route.key_source == KeySource.BYOK
    await route_close(route, usage=Usage(), charge=False, outcome=refusal.outcome)
    headers = [h for h in refusal.headers if h[0] != b"content-type"] + route.receipt_headers()
    if (not byok and refusal.failure in (ProviderFailure.KEY_INVALID, ProviderFailure.QUOTA)) or (
        not byok and refusal.status == 403
    ):
        # Niyra's own key was refused: the user can do nothing about it; we must.
        logger.error(
            "platform key refused: provider=%s status=%d failure=%s call=%s",
            provider,
            refusal.status,
            refusal.failure,
            route.call_id,
        )
        await exchange.error(NiyraError(errors.PROVIDER_UNAVAILABLE, detail={"provider": provider}), plan.shape)
        return
    if byok and refusal.failure in (ProviderFailure.KEY_INVALID, ProviderFailure.QUOTA, ProviderFailure.RATE_LIMITED):
        spec = {
            ProviderFailure.KEY_INVALID: errors.KEY_REJECTED,
            ProviderFailure.QUOTA: errors.KEY_QUOTA_EXHAUSTED,
            ProviderFailure.RATE_LIMITED: errors.KEY_RATE_LIMITED,
        }[refusal.failure]
        detail: dict[str, Any] = {"provider": provider}
        if refusal.retry_after is not None:
            detail["retry_after_seconds"] = refusal.retry_after
        exc = NiyraError(spec, detail=detail)
        niyra_body = with_niyra_message(refusal.payload, exc, plan.shape)
        await exchange.respond(refusal.status, orjson.dumps(niyra_body), headers=headers)
        return
    if plan.translate_error:
        relayed = orjson.dumps(translate.anthropic_error_to_openai(refusal.status, refusal.payload))
    else:
        relayed = refusal.body
    await exchange.respond(refusal.status, relayed, headers=headers)


async def _relay_json(exchange: Exchange, plan: Plan, route: Route, answer: upstream.Upstream) -> None:
    try:
        with exchange.provider_waited():
            body = await answer.read()
        payload = orjson.loads(body)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        logger.warning("provider %s answer unreadable for call %s (%s)", plan.model.provider, route.call_id, exc)
        await route_close(route, usage=Usage(), charge=False, outcome=errors.PROVIDER_UNAVAILABLE.code)
        await exchange.error(
            NiyraError(errors.PROVIDER_UNAVAILABLE, detail={"provider": plan.model.provider}), plan.shape
        )
        return
    usage = (
        metering.usage_from_response(plan.surface, payload, request_body=plan.payload)
        if isinstance(payload, dict)
        else None
    )
    await route_close(route, usage=usage or Usage(), charge=True, outcome=OUTCOME_OK)
    if isinstance(payload, dict) and (plan.translate_json is not None or plan.body_receipt):
        if plan.translate_json is not None:
            payload = plan.translate_json(payload)
        if plan.body_receipt:
            payload["niyra"] = route.receipt_body()
        body = orjson.dumps(payload)
    headers = answer.relayed_headers() + route.receipt_headers() + route.receipt_totals()
    await exchange.respond(200, body, headers=headers)


async def _relay_raw(exchange: Exchange, plan: Plan, route: Route, answer: upstream.Upstream) -> None:
    """Audio: bytes relayed as they come; the usage is what was asked for (characters)."""
    usage = metering.usage_from_response(plan.surface, {}, request_body=plan.payload) or Usage()
    outcome = OUTCOME_OK
    try:
        await exchange.start(
            200, content_type=_content_type(answer), headers=answer.relayed_headers() + route.receipt_headers()
        )
        content = answer.response.content
        while True:
            with exchange.provider_waited():
                chunk = await content.readany()
            if not chunk:
                break
            await exchange.send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientError, TimeoutError):
        outcome = OUTCOME_CUT
    finally:
        answer.close()
        await asyncio.shield(route_close(route, usage=usage, charge=True, outcome=outcome))
    await exchange.send({"type": "http.response.body", "body": b""})


def _content_type(answer: upstream.Upstream) -> bytes:
    return answer.response.headers.get("content-type", "application/octet-stream").encode("latin-1")


async def _event_batches(exchange: Exchange, answer: upstream.Upstream) -> AsyncIterator[list[metering.SseEvent]]:
    """The stream's events, in the batches its chunks brought: relayed one write per batch (the
    time waiting on each read is the provider's, not Niyra's)."""
    splitter = metering.SseSplitter()
    content, limit = answer.response.content, float(settings.PROVIDER_TIMEOUT_SECONDS)
    while True:
        # A bound on each wait of its own: once a provider has dropped the connection mid-body,
        # aiohttp's read timeout may never fire (and it may say so with a RuntimeError).
        try:
            with exchange.provider_waited():
                async with asyncio.timeout(limit):
                    chunk = await content.readany()
        except RuntimeError as exc:
            raise aiohttp.ClientPayloadError(str(exc)) from None
        if not chunk:
            break
        events = splitter.feed(chunk)
        if events:
            yield events
    rest = splitter.flush()
    if rest:
        yield rest


def _is_error_event(event: metering.SseEvent) -> bool:
    return event.event == "error" or event.data.startswith(b'{"error"')


async def _relay_stream(exchange: Exchange, plan: Plan, route: Route, answer: upstream.Upstream) -> None:
    """SSE: each event relayed as received (or translated), its usage read on the way.

    The first event is read before the response starts, so a stream the provider fails at once
    is an HTTP error, not a 200 with an error inside. The event that ends the stream (and what
    follows it) is held back until the call is closed: a client that has read the end of its
    stream can rely on the books."""
    meter_surface = Surface.ANTHROPIC_MESSAGES if plan.translator is not None else plan.surface
    meter = metering.StreamMeter(meter_surface, plan.payload)
    translator = plan.translator() if plan.translator is not None else None
    batches = _event_batches(exchange, answer)
    outcome = OUTCOME_OK
    tail: list[bytes] = []  # from the event that completes the stream on
    watcher = _disconnect_watcher(exchange)
    try:
        try:
            batch = await anext(batches, None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("stream of call %s failed before its first event (%r)", route.call_id, exc)
            batch = None
        first = batch[0] if batch else None
        if first is None or _is_error_event(first) or not _is_json(first.data):
            await _stream_failed_at_once(exchange, plan, route, first)
            return
        await exchange.start(200, content_type=SSE, headers=route.receipt_headers())
        while batch is not None:
            out: list[bytes] = []
            for event in batch:
                usage_only = meter.observe(event.data)
                if translator is not None:
                    relayed = _translated(translator, event)
                elif usage_only and plan.hide_usage_chunk:
                    continue
                else:
                    relayed = event.raw
                (tail if meter.complete else out).append(relayed)
            if out:
                await exchange.send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            batch = await anext(batches, None)
        if not meter.complete:
            outcome = OUTCOME_CUT
    except (aiohttp.ClientError, TimeoutError, translate.StreamError):
        outcome = OUTCOME_OK if meter.complete else OUTCOME_CUT
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is None or not watcher.done():  # the server cut it (a deploy's grace ran out)
            outcome = OUTCOME_OK if meter.complete else OUTCOME_CUT
            raise
        current.uncancel()
        outcome = OUTCOME_OK if meter.complete else OUTCOME_DISCONNECTED
    finally:
        watcher.cancel()
        answer.close()
        failure: NiyraError | None = None
        if exchange.started and route.outcome is None:
            failure = await asyncio.shield(_close_stream(route, meter, outcome))
    if failure is None and outcome == OUTCOME_CUT:
        failure = NiyraError(errors.PROVIDER_UNAVAILABLE, detail={"provider": plan.model.provider})
    if failure is not None and plan.in_stream_errors:
        tail = [b"data: " + error_bytes(failure, Shape.OPENAI) + b"\n\n"]
    elif outcome == OUTCOME_OK and translator is not None:
        tail.append(b"data: [DONE]\n\n")
    if watcher.cancelled() or not watcher.done():
        await exchange.send({"type": "http.response.body", "body": b"".join(tail)})


async def _close_stream(route: Route, meter: metering.StreamMeter, outcome: str) -> NiyraError | None:
    """Close a stream's call; the error to tell its client if the books could not be written
    (its hold then stays open, and the sweeper releases it: nothing is charged)."""
    try:
        await route_close(route, usage=meter.final_usage(), charge=True, outcome=outcome)
    except (NiyraError, psycopg.Error) as exc:
        logger.exception("routed call %s could not be closed", route.call_id)
        return exc if isinstance(exc, NiyraError) else NiyraError(errors.INTERNAL_ERROR)
    return None


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _translated(translator: translate.AnthropicChatStream, event: metering.SseEvent) -> bytes:
    if not event.data:
        return b""
    chunks = translator.feed(event.event, orjson.loads(event.data))
    return b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks)


async def _stream_failed_at_once(exchange: Exchange, plan: Plan, route: Route, first: metering.SseEvent | None) -> None:
    await route_close(route, usage=Usage(), charge=False, outcome=errors.PROVIDER_UNAVAILABLE.code)
    if first is not None:
        with contextlib.suppress(orjson.JSONDecodeError):
            payload = orjson.loads(first.data)
            body = translate.anthropic_error_to_openai(529, payload) if plan.translate_error else payload
            status = 529 if plan.shape is Shape.ANTHROPIC else 503
            await exchange.respond(status, orjson.dumps(body), headers=route.receipt_headers())
            return
    await exchange.error(NiyraError(errors.PROVIDER_UNAVAILABLE, detail={"provider": plan.model.provider}), plan.shape)


def _disconnect_watcher(exchange: Exchange) -> asyncio.Task[None]:
    """Cancels the relay when the client goes away (the ASGI server's send is silent then)."""
    relay = asyncio.current_task()

    async def watch() -> None:
        while True:
            message = await exchange.receive()
            if message["type"] == "http.disconnect":
                if relay is not None:
                    relay.cancel()
                return

    return asyncio.create_task(watch())
