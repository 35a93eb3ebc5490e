"""Routing endpoints of Niyra's own API (the providers' APIs are the gateway's: docs/gateway.md).

* `POST /api/llm/messages` — Niyra's native format; JSON or SSE (`"stream": true`). It is a
  call of the gateway's universal surface made in process (`routing.gateway.local`): the same
  credential decision, hold, relay and bill as `/v1/chat/completions`.
* `GET /api/llm/models` — what this user can call now, and why not.
* `GET /api/llm/calls/{id}` — a routed call's final receipt (streams too, once closed), for
  its owner only.
* `GET|PUT /api/llm/preferences` — the opt-in fallback to credits, and its daily cap.

The async view parses and validates with a DRF serializer (DRF views are sync), with the same
error catalogue and `{code, message, detail}` bodies.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import bearer_api_token, bearer_token, request_user
from accounts.models import User
from core import errors
from core.errors import NiyraError
from core.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from credits.models import KeySource
from credits.money import credits_text
from routing.catalog import resolve
from routing.gateway import local
from routing.models import RoutingPreference
from routing.selectors import model_availability_list, routed_call_get
from routing.services import CAP_MAX_MC, CAP_TOO_LARGE, CAP_TOO_SMALL, KEEP, routing_preference_set

MAX_BODY_BYTES = 1_000_000
MAX_TOKENS_LIMIT = 32_768
DEFAULT_MAX_TOKENS = 1024
MAX_MESSAGES = 1000

AsyncView = Callable[..., Coroutine[Any, Any, HttpResponseBase]]
STOP_REASONS = {"stop": "stop", "length": "length"}


# --- Plumbing ----------------------------------------------------------------------------------


def _error_response(exc: NiyraError) -> JsonResponse:
    response = JsonResponse(exc.as_dict(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _csrf_failure(request: HttpRequest) -> bool:
    """Session-authenticated writes need a CSRF token, as DRF's SessionAuthentication demands."""
    check = CsrfViewMiddleware(lambda _request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, lambda _request: HttpResponse(), (), {}) is not None


def _token_user(request: HttpRequest) -> User | None:
    token = bearer_api_token(request)
    return token.user if token is not None else None


async def request_caller(request: HttpRequest) -> User:
    """The caller's user: a Bearer API token if one is sent (a bad one is an error), else the
    session (with its CSRF check, as DRF's SessionAuthentication demands)."""
    if bearer_token(request) is not None:
        user = await sync_to_async(_token_user)(request)
        if user is None:
            raise NiyraError(errors.AUTHENTICATION_FAILED)
    else:
        session_user = await request.auser()
        if not isinstance(session_user, User) or not session_user.is_active:
            raise NiyraError(errors.NOT_AUTHENTICATED)
        if _csrf_failure(request):
            raise NiyraError(errors.PERMISSION_DENIED, message="CSRF token missing or incorrect.")
        user = session_user
    return user


def llm_endpoint(view: AsyncView) -> AsyncView:
    """Method, auth (Bearer token or session + CSRF), JSON body parsing, and catalogue errors."""

    @csrf_exempt
    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            if request.method != "POST":
                raise NiyraError(errors.METHOD_NOT_ALLOWED, headers={"Allow": "POST"})
            user = await request_caller(request)
            payload = _json_body(request)
            return await view(request, user, payload, *args, **kwargs)
        except NiyraError as exc:
            return _error_response(exc)

    return wrapper


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise NiyraError(errors.UNSUPPORTED_MEDIA_TYPE)
    length = request.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise NiyraError(errors.REQUEST_TOO_LARGE, detail={"max_bytes": MAX_BODY_BYTES})
    body = request.body
    if len(body) > MAX_BODY_BYTES:
        raise NiyraError(errors.REQUEST_TOO_LARGE, detail={"max_bytes": MAX_BODY_BYTES})
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise NiyraError(errors.MALFORMED_JSON) from None
    if not isinstance(payload, dict):
        raise NiyraError(errors.INVALID_INPUT, detail={"non_field_errors": ["Send a JSON object."]})
    return payload


def _validated(serializer_class: type[serializers.Serializer], payload: dict[str, Any]) -> dict[str, Any]:
    serializer = serializer_class(data=payload)
    if not serializer.is_valid():
        raise NiyraError(errors.INVALID_INPUT, detail=serializer.errors)
    return dict(serializer.validated_data)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _routing(model_id: str, answer: local.Answer) -> dict[str, Any]:
    """Who served the call and its receipt (the gateway's, as `/v1` puts it in a body)."""
    route = answer.route
    receipt = route.receipt_body() if route is not None else {}
    charged = int(receipt.get("credits_charged_mc") or 0)
    return {
        "key_source": answer.key_source,
        "provider": _provider(model_id),
        "model": model_id,
        "credits_charged_mc": charged,
        "credits_charged": credits_text(charged, for_people=False),
        "balance_after_mc": receipt.get("balance_after_mc"),
        "credits_would_cost_mc": receipt.get("credits_would_cost_mc"),
        "fell_back": bool(receipt.get("fell_back")),
    }


def answer_error(answer: local.Answer) -> NiyraError:
    """The error a gateway answer carries, as the catalogue's error (a provider's own refusal
    of the request keeps its words)."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    spec = errors.CATALOGUE.get(code) if isinstance(code, str) else None
    headers = {"Retry-After": answer.headers["retry-after"]} if "retry-after" in answer.headers else {}
    if spec is not None and isinstance(body, dict):
        return NiyraError(spec, message=body.get("message") or None, detail=body.get("detail"), headers=headers)
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if answer.status < 500 and isinstance(message, str):
        return NiyraError(errors.INVALID_INPUT, message=message, detail={"provider_error": error})
    return NiyraError(errors.PROVIDER_UNAVAILABLE, headers=headers)


def _text_content(value: Any) -> str:
    """Message content: a string, or a list of `{"type": "text", "text": ...}` blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in value
    ):
        return "".join(part["text"] for part in value)
    raise serializers.ValidationError("A string, or a list of {type: text, text} blocks.")


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
                    "required": ["type", "text"],
                },
            },
        ]
    }
)
class ContentField(serializers.Field):
    def to_internal_value(self, data: Any) -> str:
        return _text_content(data)

    def to_representation(self, value: Any) -> Any:
        return value


# --- Native: POST /api/llm/messages ------------------------------------------------------------


class NativeMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = ContentField()


class NativeRequestSerializer(serializers.Serializer):
    model = StrictCharField(max_length=100)
    messages = NativeMessageSerializer(many=True, allow_empty=False, max_length=MAX_MESSAGES)  # type: ignore[call-arg]
    system = StrictCharField(required=False, allow_blank=True)
    max_tokens = StrictIntegerField(min_value=1, max_value=MAX_TOKENS_LIMIT, default=DEFAULT_MAX_TOKENS)
    temperature = StrictFloatField(required=False, min_value=0.0, max_value=2.0)
    stream = StrictBooleanField(default=False)


def _universal_body(data: dict[str, Any]) -> dict[str, Any]:
    """The native request as a call of the universal surface (OpenAI's format)."""
    messages = [{"role": "system", "content": data["system"]}] if data.get("system") else []
    messages += [{"role": m["role"], "content": m["content"]} for m in data["messages"]]
    body: dict[str, Any] = {
        "model": data["model"],
        "messages": messages,
        "max_completion_tokens": data["max_tokens"],
    }
    if data.get("temperature") is not None:
        body["temperature"] = data["temperature"]
    return body


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details") or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cached_tokens": int(details.get("cached_tokens") or 0),
    }


@llm_endpoint
async def messages_create(request: HttpRequest, user: User, payload: dict[str, Any]) -> HttpResponseBase:
    data = _validated(NativeRequestSerializer, payload)
    body = _universal_body(data)
    model = data["model"]
    if data["stream"]:
        answer, chunks = await local.chat_stream(
            user.pk, body | {"stream": True, "stream_options": {"include_usage": True}}
        )
        if answer.status != 200:
            answer.body = b"".join([chunk async for chunk in chunks])
            return _error_response(answer_error(answer))
        streamed = StreamingHttpResponse(_native_events(answer, chunks, model), content_type="text/event-stream")
        streamed["Cache-Control"] = "no-cache"
        streamed["X-Accel-Buffering"] = "no"
        _receipt_headers(streamed, answer)
        return streamed
    answer = await local.chat(user.pk, body)
    if answer.status != 200:
        return _error_response(answer_error(answer))
    completion = answer.json()
    choice = completion["choices"][0]
    response = JsonResponse(
        {
            "id": answer.call_id,
            "model": model,
            "content": choice["message"].get("content") or "",
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "other"),
            "usage": _usage(completion.get("usage")),
            "routing": _routing(model, answer),
        }
    )
    _receipt_headers(response, answer)
    return response


def _receipt_headers(response: HttpResponseBase, answer: local.Answer) -> None:
    """The gateway's receipt headers (call id and key source; the totals once closed)."""
    for name, value in answer.headers.items():
        if name.startswith("x-niyra-"):
            response[name] = value


def _provider(model_id: str) -> str:
    return str(resolve(model_id).provider)


async def _native_events(answer: local.Answer, chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
    """OpenAI chunks in, Niyra's native events out: `routing`, `delta`..., then `done` or `error`."""
    yield _sse("routing", {"id": answer.call_id, "key_source": answer.key_source, "model": model})
    stop_reason, usage, buffer = "other", _usage(None), b""
    async for chunk in chunks:
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            data = event.removeprefix(b"data: ").strip()
            if not data or data == b"[DONE]":
                continue
            parsed = json.loads(data)
            if "error" in parsed:
                spec = errors.CATALOGUE.get(parsed.get("code") or "", errors.PROVIDER_UNAVAILABLE)
                yield _sse("error", NiyraError(spec, message=parsed.get("message")).as_dict())
                return
            if parsed.get("usage"):
                usage = _usage(parsed["usage"])
            for choice in parsed.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield _sse("delta", {"text": text})
                if choice.get("finish_reason"):
                    stop_reason = STOP_REASONS.get(choice["finish_reason"], "other")
    receipt = answer.receipt
    if receipt is None or answer.route is None or answer.route.outcome != "ok":
        yield _sse("error", NiyraError(errors.PROVIDER_UNAVAILABLE).as_dict())
        return
    yield _sse(
        "done",
        {
            "stop_reason": stop_reason,
            "usage": usage,
            "routing": _routing(model, answer),
        },
    )


class ModelListApi(APIView):
    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        name = serializers.CharField()
        provider = serializers.CharField()
        family = serializers.CharField()
        kind = serializers.CharField()
        byok_only = serializers.BooleanField()
        available = serializers.BooleanField()
        key_source = serializers.CharField(allow_null=True)
        reason_code = serializers.CharField(allow_null=True)
        reason = serializers.CharField(allow_null=True)

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        rows = [
            {
                "id": item.model.id,
                "name": item.model.label,
                "provider": item.model.provider,
                "family": item.model.family,
                "kind": item.model.kind,
                "byok_only": item.model.byok_only,
                "available": item.available,
                "key_source": item.key_source,
                "reason_code": item.reason_code,
                "reason": item.reason,
            }
            for item in model_availability_list(user=request_user(request))
        ]
        return Response(self.OutputSerializer(rows, many=True).data)


class CallReceiptApi(APIView):
    """A routed call's receipt as the books closed it: who paid, what was charged, the balance
    after, and for a BYOK call what it would have cost. Streams included: the headers of a
    stream carry its call id before its money is known. Another user's call is not found."""

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        model = serializers.CharField()
        provider = serializers.CharField()
        surface = serializers.CharField(help_text="The API called, e.g. openai.chat.")
        key_source = serializers.ChoiceField(choices=["byok", "platform"], help_text="Who paid.")
        stream = serializers.BooleanField()
        fell_back = serializers.BooleanField(help_text="Served on credits after your own key was refused.")
        outcome = serializers.CharField(help_text="`ok`, or the error code the call ended with.")
        tokens_in = serializers.IntegerField()
        tokens_out = serializers.IntegerField()
        tokens_cached = serializers.IntegerField()
        credits_charged_mc = serializers.IntegerField()
        credits_charged = serializers.CharField()
        balance_after_mc = serializers.IntegerField(
            allow_null=True, help_text="Your balance after the call (null: the call wrote no ledger entry)."
        )
        credits_would_cost_mc = serializers.IntegerField(
            allow_null=True, help_text="BYOK calls: what the call would have cost in credits (null on credits)."
        )
        latency_ms = serializers.IntegerField()
        created_at = serializers.DateTimeField()

    @extend_schema(operation_id="llm_calls_retrieve", responses=OutputSerializer)
    def get(self, request: Request, call_id: uuid.UUID) -> Response:
        call = routed_call_get(user=request_user(request), call_id=call_id)
        if call is None:
            raise NiyraError(errors.NOT_FOUND)
        byok = call.key_source == KeySource.BYOK
        return Response(
            self.OutputSerializer(
                {
                    "id": call.id,
                    "model": call.model,
                    "provider": call.provider,
                    "surface": call.surface,
                    "key_source": call.key_source,
                    "stream": call.stream,
                    "fell_back": call.fell_back,
                    "outcome": call.outcome,
                    "tokens_in": call.tokens_in,
                    "tokens_out": call.tokens_out,
                    "tokens_cached": call.tokens_cached,
                    "credits_charged_mc": call.credits_charged,
                    "credits_charged": credits_text(call.credits_charged, for_people=False),
                    "balance_after_mc": call.balance_after,
                    "credits_would_cost_mc": call.credits_would_cost if byok else None,
                    "latency_ms": call.latency_ms,
                    "created_at": call.created_at,
                }
            ).data
        )


class PreferencesApi(APIView):
    """The opt-in fallback to credits, and its optional daily cap (`fallback_daily_cap_mc`:
    millicredits a UTC day, null for no cap, at least 1; left out of a PUT: unchanged)."""

    class PreferencesSerializer(serializers.Serializer):
        fallback_to_credits = StrictBooleanField()
        fallback_daily_cap_mc = StrictIntegerField(
            required=False,
            allow_null=True,
            min_value=1,
            max_value=CAP_MAX_MC,
            error_messages={"min_value": CAP_TOO_SMALL, "max_value": CAP_TOO_LARGE},
            help_text="At most this many millicredits a UTC day on the fallback (null: no cap). "
            "Past it, your own key's error stands.",
        )

    @staticmethod
    def _out(preference: RoutingPreference | None) -> dict[str, Any]:
        return {
            "fallback_to_credits": bool(preference and preference.fallback_to_credits),
            "fallback_daily_cap_mc": preference.fallback_daily_cap_mc if preference is not None else None,
        }

    @extend_schema(responses=PreferencesSerializer)
    def get(self, request: Request) -> Response:
        return Response(self._out(RoutingPreference.objects.filter(user=request_user(request)).first()))

    @extend_schema(request=PreferencesSerializer, responses=PreferencesSerializer)
    def put(self, request: Request) -> Response:
        payload = self.PreferencesSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        preference = routing_preference_set(
            user=request_user(request),
            fallback_to_credits=data["fallback_to_credits"],
            fallback_daily_cap_mc=data.get("fallback_daily_cap_mc", KEEP),
        )
        return Response(self._out(preference))


# --- OpenAPI for the async endpoints -----------------------------------------------------------
# drf-spectacular documents DRF views only. Each async view gets a schema-only APIView as its
# `cls` (what `APIView.as_view()` sets), so the schema, the docs page and Schemathesis see the
# same request and response shapes the views enforce (error responses are added to every
# operation by `core.schema.add_error_responses`). These classes never serve a request.


class UsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()


class RoutingInfoSerializer(serializers.Serializer):
    key_source = serializers.ChoiceField(choices=["byok", "platform"])
    provider = serializers.CharField()
    model = serializers.CharField()
    credits_charged_mc = serializers.IntegerField()
    credits_charged = serializers.CharField()
    balance_after_mc = serializers.IntegerField(allow_null=True, help_text="Your balance after the call.")
    credits_would_cost_mc = serializers.IntegerField(
        allow_null=True, help_text="BYOK calls: what the call would have cost in credits (null on credits)."
    )
    fell_back = serializers.BooleanField(help_text="Served on credits after your own key was refused.")


class NativeResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField()
    content = serializers.CharField(allow_blank=True)
    stop_reason = serializers.CharField()
    usage = UsageSerializer()
    routing = RoutingInfoSerializer()


# OpenAPI 3.0 cannot describe a stream, so `text/event-stream` describes one event (as
# Schemathesis and most generators read it): native streams name each event, /v1/ ones don't.
SSE = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "description": "routing, delta, done or error (native API only)."},
        "data": {"type": "string", "description": "A JSON object; the last /v1/ event is `[DONE]`."},
    },
    "required": ["data"],
}


class _SchemaOnly(APIView):
    def post(self, request: Request) -> Response:  # pragma: no cover - never routed
        raise NotImplementedError


class MessagesSchema(_SchemaOnly):
    @extend_schema(
        operation_id="llm_messages_create",
        request=NativeRequestSerializer,
        responses={200: NativeResponseSerializer, (200, "text/event-stream"): SSE},
        description="Send a message through the right key: yours (BYOK) or Niyra credits. "
        '`"stream": true` answers with server-sent events: `routing`, `delta`..., then `done` or `error`.',
    )
    def post(self, request: Request) -> Response:  # pragma: no cover
        raise NotImplementedError


for _view, _schema in ((messages_create, MessagesSchema),):
    _view.cls = _schema  # type: ignore[attr-defined]
    _view.initkwargs = {}  # type: ignore[attr-defined]
