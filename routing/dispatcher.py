"""The dispatcher: model -> provider -> credential, the provider call, and the bill.

One `LLMDispatcher` per request (`request.llm`, from `RoutingMiddleware`). It resolves the user
only when a call is made: for an API token, the token, the user and the routing snapshot
(billing account, saved keys, fallback setting) are read in one thread hop. Per call:

1. `_route_open`: the credential is chosen from that snapshot —
   * a Pro/Alpha user with a usable key for the model's provider -> their key (`byok`): no
     `llm` charge, usage recorded at zero cost; no database work (the key is decrypted in
     memory and lives only in the caller's local variable for the call);
   * otherwise the platform key (`platform`) with a credits hold for the worst case first (one
     hop, one statement): too few credits -> `insufficient_credits` before any provider call;
   * never a silent switch: a BYOK-only model without a key, a key marked invalid or unreadable,
     or a saved key on a plan without BYOK are errors the user sees.
2. The provider call, with no database transaction open.
3. `_route_close` (one thread hop): settle the hold from the provider's usage (void it if the
   call failed and nothing was generated), record BYOK usage, log the routed call; a 401 on the
   user's key marks it invalid (audited).

Opt-in fallback (`RoutingPreference.fallback_to_credits`): a BYOK call refused as rate-limited
or out of quota is retried once on credits. Every result says which `key_source` served it.

Streams that break, or whose client goes away, still settle what was used: the provider's own
counts when it sent them; otherwise input = ceil(prompt characters / 4) and output = the
number of text deltas received (each carries at least one token), capped at max_tokens.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from byok.selectors import provider_key_plaintext
from byok.services import provider_key_mark_invalid, provider_key_mark_needs_reentry
from core import errors
from core.db import db_sync_to_async
from core.errors import NiyraError
from credits import pricing
from credits.models import CreditHold, KeySource
from credits.services.holds import credit_hold, credit_settle, credit_void
from credits.services.ledger import credit_usage_record
from providers import Provider, get_adapter
from providers.types import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    EmbeddingResult,
    StreamEnd,
    TextDelta,
    Usage,
    UsageUpdate,
)
from routing import catalog
from routing.catalog import CatalogModel, Kind
from routing.credentials import RoutingSnapshot, credential_decide
from routing.selectors import routing_snapshot
from routing.services import routed_call_record

logger = logging.getLogger(__name__)

FALLBACK_CODES = frozenset({errors.KEY_RATE_LIMITED.code, errors.KEY_QUOTA_EXHAUSTED.code})
CHARS_PER_TOKEN_WORST_CASE = 2  # holds over-reserve; the settle charges what was used
CHARS_PER_TOKEN_TYPICAL = 4  # only when a provider never reported usage (a cut stream)
MESSAGE_OVERHEAD_TOKENS = 8


def _platform_key(provider: str) -> str:
    return str(settings.ANTHROPIC_API_KEY if provider == Provider.ANTHROPIC else settings.OPENAI_API_KEY)


def prompt_characters(request: ChatRequest) -> int:
    return len(request.system or "") + sum(len(m.content) for m in request.messages)


@dataclass(slots=True)
class Route:
    """An open routed call. Holds no secret: the key is a separate local of the caller."""

    call_id: uuid.UUID
    user: User
    model: CatalogModel
    key_source: str
    started: float
    hold: CreditHold | None = None
    key_fingerprint: str | None = None
    fallback_allowed: bool = False
    fell_back: bool = False  # this is the retry on credits after the user's key was refused
    credits_charged: int = 0


@dataclass(frozen=True, slots=True)
class RoutedMessage:
    call_id: uuid.UUID
    model: CatalogModel
    key_source: str
    text: str
    stop_reason: str
    usage: Usage
    credits_charged: int


@dataclass(frozen=True, slots=True)
class RoutedEmbeddings:
    call_id: uuid.UUID
    model: CatalogModel
    vectors: list[list[float]]
    input_tokens: int
    credits_charged: int


@dataclass(slots=True)
class RoutedStream:
    """A stream being served. Iterate `events()`; `route` says who pays, `usage` and
    `credits_charged` are final once the iteration has ended (however it ended)."""

    dispatcher: LLMDispatcher
    request: ChatRequest
    route: Route
    api_key: str = field(repr=False)
    usage: Usage = field(default_factory=Usage)
    stop_reason: str = "other"
    error: NiyraError | None = None
    started: bool = False
    finished: bool = False
    closed: bool = False

    @property
    def key_source(self) -> str:
        return self.route.key_source

    @property
    def credits_charged(self) -> int:
        return self.route.credits_charged

    async def events(self) -> AsyncIterator[TextDelta]:
        adapter = get_adapter(self.route.model.provider)
        deltas = 0
        self.started = True
        api_key, self.api_key = self.api_key, ""  # the stream object must not keep the key
        try:
            async for event in adapter.stream(api_key, self.request):
                if isinstance(event, TextDelta):
                    deltas += 1
                    yield event
                elif isinstance(event, UsageUpdate):
                    self.usage = event.usage
                elif isinstance(event, StreamEnd):
                    self.stop_reason = event.stop_reason
                    self.finished = True
        except NiyraError as exc:
            self.error = exc
        finally:
            del api_key
            if not self.finished:
                # Cut short (provider error or the client left): pay for what was generated.
                self.usage = self._estimated_usage(deltas) if deltas else Usage()
            # Settle even if the client went away (cancellation): shielded, so it completes.
            await asyncio.shield(self._close())
        if self.error is not None:
            raise self.error

    async def abandon(self) -> None:
        """The response ended before `events()` ran (the client left at once): release the
        hold and log the call. Safe to call always; it does nothing once events() has run."""
        if self.started or self.closed:
            return
        self.api_key = ""
        await asyncio.shield(self._close())

    def _estimated_usage(self, deltas: int) -> Usage:
        usage = self.usage
        input_tokens = usage.input_tokens or math.ceil(prompt_characters(self.request) / CHARS_PER_TOKEN_TYPICAL)
        output_tokens = min(max(usage.output_tokens, deltas), self.request.max_tokens)
        return Usage(input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=usage.cached_tokens)

    async def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        outcome = self.error.code if self.error else ("ok" if self.finished else "client_disconnected")
        try:
            self.error = await self.dispatcher._close(
                self.route, usage=self.usage, outcome=outcome, stream=True, error=self.error
            )
        except DatabaseError:
            # The response has started, so an exception would only cut it off: end the stream
            # with the catalogue's error instead. The hold stays open: the sweeper releases it.
            logger.exception("routed call %s could not be settled", self.route.call_id)
            self.error = NiyraError(errors.INTERNAL_ERROR)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, and the routing snapshot when it was read along with them (the API-token
    path reads both in one hop; otherwise the first call reads the snapshot)."""

    user: User
    snapshot: RoutingSnapshot | None = None


class LLMDispatcher:
    """Routes LLM calls for one request's user. Cheap to create: nothing happens until a call."""

    def __init__(self, caller_resolver: Callable[[], Awaitable[User | Caller | None]]) -> None:
        self._caller_resolver = caller_resolver
        self._user: User | None = None
        self._snapshot: RoutingSnapshot | None = None

    async def user(self) -> User:
        if self._user is None:
            caller = await self._caller_resolver()
            if caller is None:
                raise NiyraError(errors.NOT_AUTHENTICATED)
            if isinstance(caller, Caller):
                self._user, self._snapshot = caller.user, caller.snapshot
            else:
                self._user = caller
        return self._user

    async def snapshot(self, user: User) -> RoutingSnapshot:
        """Read once per request: every call of this request routes on the same facts."""
        if self._snapshot is None:
            self._snapshot = await db_sync_to_async(routing_snapshot)(user_id=user.pk)
        return self._snapshot

    # --- Public calls ---------------------------------------------------------------------

    @sensitive_variables("api_key")
    async def message(
        self,
        *,
        model: str,
        messages: list[ChatMessage],
        max_tokens: int,
        system: str | None = None,
        temperature: float | None = None,
        stop: tuple[str, ...] = (),
    ) -> RoutedMessage:
        catalog_model, request = self._chat_request(model, messages, max_tokens, system, temperature, stop)
        user = await self.user()
        route, api_key = await self._open(user, catalog_model, request)
        result = await self._generate(route, api_key, request)
        if isinstance(result, NiyraError) and self._may_fall_back(route, result):
            route, api_key = await self._open(user, catalog_model, request, platform_only=True)
            route.fell_back = True
            result = await self._generate(route, api_key, request)
        del api_key
        if isinstance(result, NiyraError):
            raise result
        return RoutedMessage(
            call_id=route.call_id,
            model=catalog_model,
            key_source=route.key_source,
            text=result.text,
            stop_reason=result.stop_reason,
            usage=result.usage,
            credits_charged=route.credits_charged,
        )

    @sensitive_variables("api_key")
    async def stream(
        self,
        *,
        model: str,
        messages: list[ChatMessage],
        max_tokens: int,
        system: str | None = None,
        temperature: float | None = None,
        stop: tuple[str, ...] = (),
    ) -> RoutedStream:
        """Opens the route (credential chosen, credits held) before the response starts, so
        routing errors are plain HTTP errors; provider errors come during iteration."""
        catalog_model, request = self._chat_request(model, messages, max_tokens, system, temperature, stop)
        user = await self.user()
        route, api_key = await self._open(user, catalog_model, request)
        return RoutedStream(dispatcher=self, request=request, route=route, api_key=api_key)

    @sensitive_variables("api_key")
    async def embeddings(self, *, model: str, inputs: list[str]) -> RoutedEmbeddings:
        """Embeddings are always paid in credits (BYOK covers LLM calls only)."""
        catalog_model = catalog.resolve(model)
        if catalog_model.kind != Kind.EMBEDDINGS:
            raise NiyraError(
                errors.INVALID_INPUT, detail={"model": [f"{catalog_model.id} is not an embeddings model."]}
            )
        user = await self.user()
        characters = sum(len(text) for text in inputs)
        estimate = math.ceil(characters / CHARS_PER_TOKEN_WORST_CASE) + len(inputs)
        route, api_key = await self._route_open(
            user, catalog_model, input_estimate=estimate, max_tokens=0, platform_only=True
        )
        adapter = get_adapter(catalog_model.provider)
        try:
            result: EmbeddingResult = await adapter.embed(
                api_key, vendor_model=catalog_model.vendor_model, inputs=inputs
            )
        except NiyraError as exc:
            del api_key
            raise await self._close(route, usage=Usage(), outcome=exc.code, stream=False, error=exc) or exc from None
        del api_key
        await self._close(route, usage=Usage(input_tokens=result.input_tokens), outcome="ok", stream=False)
        return RoutedEmbeddings(
            call_id=route.call_id,
            model=catalog_model,
            vectors=result.vectors,
            input_tokens=result.input_tokens,
            credits_charged=route.credits_charged,
        )

    # --- Internals ----------------------------------------------------------------------------

    @staticmethod
    def _chat_request(
        model_id: str,
        messages: list[ChatMessage],
        max_tokens: int,
        system: str | None,
        temperature: float | None,
        stop: tuple[str, ...],
    ) -> tuple[CatalogModel, ChatRequest]:
        """The catalog model (a chat model, else a clear 400) and the request for its adapter."""
        model = catalog.resolve(model_id)
        if model.kind != Kind.CHAT:
            raise NiyraError(errors.INVALID_INPUT, detail={"model": [f"{model.id} is not a chat model."]})
        return model, ChatRequest(
            vendor_model=model.vendor_model,
            messages=tuple(messages),
            max_tokens=max_tokens,
            system=system,
            temperature=temperature,
            stop=stop,
        )

    @staticmethod
    def _may_fall_back(route: Route, error: NiyraError) -> bool:
        return route.key_source == KeySource.BYOK and route.fallback_allowed and error.code in FALLBACK_CODES

    async def _open(
        self, user: User, model: CatalogModel, request: ChatRequest, *, platform_only: bool = False
    ) -> tuple[Route, str]:
        estimate = math.ceil(prompt_characters(request) / CHARS_PER_TOKEN_WORST_CASE) + MESSAGE_OVERHEAD_TOKENS * (
            len(request.messages) + 1
        )
        return await self._route_open(
            user, model, input_estimate=estimate, max_tokens=request.max_tokens, platform_only=platform_only
        )

    @sensitive_variables("api_key")
    async def _generate(self, route: Route, api_key: str, request: ChatRequest) -> ChatResult | NiyraError:
        try:
            result = await get_adapter(route.model.provider).generate(api_key, request)
        except NiyraError as exc:
            return await self._close(route, usage=Usage(), outcome=exc.code, stream=False, error=exc) or exc
        await self._close(route, usage=result.usage, outcome="ok", stream=False)
        return result

    async def _close(
        self, route: Route, *, usage: Usage, outcome: str, stream: bool, error: NiyraError | None = None
    ) -> NiyraError | None:
        """Settle or void, record, log. Returns the error the user should see (if any)."""
        await db_sync_to_async(self._route_close)(route, usage=usage, outcome=outcome, stream=stream, error=error)
        if route.key_source == KeySource.BYOK and error is not None and error.spec is errors.KEY_INVALID:
            # The key was marked invalid: tell the user to update or disconnect it.
            return NiyraError(errors.KEY_REJECTED, detail={"provider": route.model.provider})
        return error

    @sensitive_variables("api_key")
    async def _route_open(
        self, user: User, model: CatalogModel, *, input_estimate: int, max_tokens: int, platform_only: bool
    ) -> tuple[Route, str]:
        """Choose the credential from the request's snapshot. BYOK needs no database work here
        (the key is decrypted in memory); the platform path takes one hop to hold credits."""
        snapshot = await self.snapshot(user)
        credential = credential_decide(model=model, snapshot=snapshot, platform_only=platform_only)
        route = Route(
            call_id=uuid.uuid4(),
            user=user,
            model=model,
            key_source=credential.key_source,
            started=time.monotonic(),
        )
        provider_key = credential.provider_key
        if provider_key is not None:
            try:
                api_key = provider_key_plaintext(provider_key)
            except NiyraError:
                await db_sync_to_async(provider_key_mark_needs_reentry)(
                    user=user, provider=model.provider, fingerprint=provider_key.fingerprint
                )
                raise
            route.key_fingerprint = provider_key.fingerprint
            route.fallback_allowed = credential.fallback_allowed
            return route, api_key
        route.hold = await db_sync_to_async(credit_hold)(
            user=user,
            idempotency_key=f"routed:{route.call_id}",
            model=model.id,
            price_key=model.price_key,
            worst=pricing.Usage(input_tokens=input_estimate, output_tokens=max_tokens),
            details={"routed_call": str(route.call_id), "model": model.id},
            # Longer than any call can take, so the sweeper never races a call in flight.
            expires_in=timedelta(seconds=max(300, 3 * int(settings.PROVIDER_TIMEOUT_SECONDS))),
        )
        return route, _platform_key(model.provider)

    # Runs in one thread hop, with its own short transactions.

    def _route_close(self, route: Route, *, usage: Usage, outcome: str, stream: bool, error: NiyraError | None) -> None:
        model = route.model
        used = usage.input_tokens > 0 or usage.output_tokens > 0
        details = {"routed_call": str(route.call_id), "model": model.id}
        if route.hold is not None:  # the platform key: credits were held for this call
            if used and (error is None or stream):
                entry = credit_settle(
                    hold_id=route.hold.pk,
                    usage=pricing.Usage(usage.input_tokens, usage.output_tokens, usage.cached_tokens),
                    idempotency_key=f"routed:{route.call_id}:settle",
                    details=details,
                    known_hold=route.hold,
                )
                route.credits_charged = -entry.amount
            else:
                credit_void(hold_id=route.hold.pk)  # a failed call costs nothing
        else:
            if used:
                credit_usage_record(
                    user=route.user,
                    model=model.id,
                    price_key=model.price_key,
                    usage=pricing.Usage(usage.input_tokens, usage.output_tokens, usage.cached_tokens),
                    idempotency_key=f"routed:{route.call_id}",
                    details=details,
                )
            if error is not None and error.spec is errors.KEY_INVALID:
                provider_key_mark_invalid(user=route.user, provider=model.provider, fingerprint=route.key_fingerprint)
        routed_call_record(
            call_id=route.call_id,
            user=route.user,
            model=model.id,
            provider=model.provider,
            kind=model.kind,
            key_source=route.key_source,
            stream=stream,
            tokens_in=usage.input_tokens,
            tokens_out=usage.output_tokens,
            tokens_cached=usage.cached_tokens,
            credits_charged=route.credits_charged,
            latency_ms=int((time.monotonic() - route.started) * 1000),
            outcome=outcome,
            fell_back=route.fell_back,
        )
        logger.info(
            "routed call %s model=%s key_source=%s outcome=%s credits_mc=%d",
            route.call_id,
            model.id,
            route.key_source,
            outcome,
            route.credits_charged,
        )
