"""Routing endpoints: async views on the hot path, DRF views for the rest.

* `POST /api/llm/messages` — Niyra's native format; JSON or SSE (`"stream": true`).
* `POST /v1/chat/completions` — OpenAI-compatible (JSON and SSE), so any OpenAI client works
  with a Niyra API token as its key, for Anthropic models too.
* `POST /v1/embeddings` — OpenAI-compatible embeddings (always paid in credits).
* `GET /api/llm/models`, `GET /v1/models` — what this user can call now, and why not.
* `GET|PUT /api/llm/preferences` — the opt-in fallback to credits.

The async views parse and validate by hand (DRF views are sync), with the same error catalogue
and `{code, message, detail}` bodies; `/v1/` errors also carry OpenAI's `error` object.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import bearer_token, request_user
from core import errors
from core.errors import NiyraError
from core.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from credits.money import credits_text
from providers.types import ChatMessage
from routing.catalog import Kind
from routing.dispatcher import LLMDispatcher, RoutedStream
from routing.models import RoutingPreference
from routing.selectors import model_availability_list
from routing.services import routing_preference_set

MAX_BODY_BYTES = 1_000_000
MAX_TOKENS_LIMIT = 32_768
DEFAULT_MAX_TOKENS = 1024
MAX_MESSAGES = 1000
MAX_EMBEDDING_INPUTS = 2048

AsyncView = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


# --- Plumbing shared by the async views --------------------------------------------------------


def _openai_error_body(exc: NiyraError) -> dict[str, Any]:
    """Niyra's `{code, message, detail}` plus OpenAI's `error` object. A field error names its
    field in `param` and says what is wrong in `message` (OpenAI clients show only these)."""
    body = exc.as_dict()
    param, field_message = errors.field_error_message(exc.detail) if exc.spec is errors.INVALID_INPUT else (None, None)
    if field_message:
        body["message"] = field_message
    body["error"] = {"message": body["message"], "type": exc.code, "code": exc.code, "param": param}
    return body


def _error_response(exc: NiyraError, *, openai_style: bool) -> JsonResponse:
    body = _openai_error_body(exc) if openai_style else exc.as_dict()
    response = JsonResponse(body, status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _csrf_failure(request: HttpRequest) -> bool:
    """Session-authenticated writes need a CSRF token, as DRF's SessionAuthentication demands."""
    check = CsrfViewMiddleware(lambda _request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, lambda _request: HttpResponse(), (), {}) is not None


def llm_endpoint(*, openai_style: bool) -> Callable[[AsyncView], AsyncView]:
    """Method, auth (Bearer token or session + CSRF), JSON body parsing, and catalogue errors."""

    def decorate(view: AsyncView) -> AsyncView:
        @csrf_exempt
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method != "POST":
                    raise NiyraError(errors.METHOD_NOT_ALLOWED)
                dispatcher: LLMDispatcher = request.llm  # type: ignore[attr-defined]
                await dispatcher.user()
                if bearer_token(request) is None and _csrf_failure(request):
                    raise NiyraError(errors.PERMISSION_DENIED, message="CSRF token missing or incorrect.")
                payload = _json_body(request)
                return await view(request, payload, *args, **kwargs)
            except NiyraError as exc:
                return _error_response(exc, openai_style=openai_style)

        return wrapper

    return decorate


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


def _sse(event: str | None, data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\ndata: {payload}\n\n" if event else f"data: {payload}\n\n").encode()


def _streaming_response(body: AsyncIterator[bytes], stream: RoutedStream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["X-Niyra-Key-Source"] = stream.key_source
    return response


def _routing(model_id: str, provider: str, key_source: str, credits_charged: int) -> dict[str, Any]:
    return {
        "key_source": key_source,
        "provider": provider,
        "model": model_id,
        "credits_charged_mc": credits_charged,
        "credits_charged": credits_text(credits_charged, for_people=False),
    }


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


@llm_endpoint(openai_style=False)
async def messages_create(request: HttpRequest, payload: dict[str, Any]) -> HttpResponseBase:
    data = _validated(NativeRequestSerializer, payload)
    dispatcher: LLMDispatcher = request.llm  # type: ignore[attr-defined]
    call = {
        "model": data["model"],
        "messages": [ChatMessage(m["role"], m["content"]) for m in data["messages"]],
        "max_tokens": data["max_tokens"],
        "system": data.get("system") or None,
        "temperature": data.get("temperature"),
    }
    if data["stream"]:
        stream = await dispatcher.stream(**call)
        return _streaming_response(_native_events(stream), stream)
    result = await dispatcher.message(**call)
    response = JsonResponse(
        {
            "id": str(result.call_id),
            "model": result.model.id,
            "content": result.text,
            "stop_reason": result.stop_reason,
            "usage": {
                "input_tokens": result.usage.input_tokens,
                "output_tokens": result.usage.output_tokens,
                "cached_tokens": result.usage.cached_tokens,
            },
            "routing": _routing(result.model.id, result.model.provider, result.key_source, result.credits_charged),
        }
    )
    response["X-Niyra-Key-Source"] = result.key_source
    return response


async def _native_events(stream: RoutedStream) -> AsyncIterator[bytes]:
    model = stream.route.model
    try:
        yield _sse("routing", {"id": str(stream.route.call_id), "key_source": stream.key_source, "model": model.id})
        async for delta in stream.events():
            yield _sse("delta", {"text": delta.text})
    except NiyraError as exc:
        yield _sse("error", exc.as_dict())
        return
    finally:
        await stream.abandon()
    usage = stream.usage
    yield _sse(
        "done",
        {
            "stop_reason": stream.stop_reason,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cached_tokens": usage.cached_tokens,
            },
            "routing": _routing(model.id, model.provider, stream.key_source, stream.credits_charged),
        },
    )


# --- OpenAI-compatible: POST /v1/chat/completions ----------------------------------------------


class OpenAIMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = ContentField()


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(default=False)


@extend_schema_field(
    {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}],
        "nullable": True,
    }
)
class StopField(serializers.JSONField):
    """OpenAI's `stop`: a string, up to 4 strings, or null (checked by `validate_stop`)."""


class ChatCompletionRequestSerializer(serializers.Serializer):
    model = StrictCharField(max_length=100)
    messages = OpenAIMessageSerializer(many=True, allow_empty=False, max_length=MAX_MESSAGES)  # type: ignore[call-arg]
    max_tokens = StrictIntegerField(required=False, min_value=1, max_value=MAX_TOKENS_LIMIT)
    max_completion_tokens = StrictIntegerField(required=False, min_value=1, max_value=MAX_TOKENS_LIMIT)
    temperature = StrictFloatField(required=False, min_value=0.0, max_value=2.0)
    stop = StopField(required=False, allow_null=True)  # OpenAI's null: no stop sequences
    stream = StrictBooleanField(default=False)
    stream_options = StreamOptionsSerializer(required=False)
    n = StrictIntegerField(required=False, min_value=1, max_value=1)

    def validate_stop(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and len(value) <= 4 and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise serializers.ValidationError("A string or up to 4 strings.")


def _openai_call(data: dict[str, Any]) -> dict[str, Any]:
    system_parts = [m["content"] for m in data["messages"] if m["role"] in ("system", "developer")]
    chat = [ChatMessage(m["role"], m["content"]) for m in data["messages"] if m["role"] in ("user", "assistant")]
    if not chat:
        raise NiyraError(errors.NO_USER_MESSAGE)
    return {
        "model": data["model"],
        "messages": chat,
        "max_tokens": data.get("max_completion_tokens") or data.get("max_tokens") or DEFAULT_MAX_TOKENS,
        "system": "\n\n".join(system_parts) or None,
        "temperature": data.get("temperature"),
        "stop": data.get("stop") or (),
    }


@llm_endpoint(openai_style=True)
async def chat_completions(request: HttpRequest, payload: dict[str, Any]) -> HttpResponseBase:
    data = _validated(ChatCompletionRequestSerializer, payload)
    dispatcher: LLMDispatcher = request.llm  # type: ignore[attr-defined]
    call = _openai_call(data)
    if data["stream"]:
        stream = await dispatcher.stream(**call)
        include_usage = bool(data.get("stream_options", {}).get("include_usage"))
        return _streaming_response(_openai_chunks(stream, include_usage=include_usage), stream)
    result = await dispatcher.message(**call)
    usage = result.usage
    response = JsonResponse(
        {
            "id": f"chatcmpl-{result.call_id.hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": result.model.id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.stop_reason if result.stop_reason != "other" else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            },
            "niyra_routing": _routing(
                result.model.id, result.model.provider, result.key_source, result.credits_charged
            ),
        }
    )
    response["X-Niyra-Key-Source"] = result.key_source
    return response


async def _openai_chunks(stream: RoutedStream, *, include_usage: bool) -> AsyncIterator[bytes]:
    model = stream.route.model
    base = {"id": f"chatcmpl-{stream.route.call_id.hex}", "object": "chat.completion.chunk", "model": model.id}
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _sse(None, base | {"created": created, "choices": [choice]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for delta in stream.events():
            yield chunk({"content": delta.text})
    except NiyraError as exc:
        yield _sse(None, _openai_error_body(exc))
        return
    finally:
        await stream.abandon()
    yield chunk({}, stream.stop_reason if stream.stop_reason != "other" else "stop")
    if include_usage:
        usage = stream.usage
        yield _sse(
            None,
            base
            | {
                "created": created,
                "choices": [],
                "usage": {
                    "prompt_tokens": usage.input_tokens,
                    "completion_tokens": usage.output_tokens,
                    "total_tokens": usage.input_tokens + usage.output_tokens,
                    "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
                },
                "niyra_routing": _routing(model.id, model.provider, stream.key_source, stream.credits_charged),
            },
        )
    yield _sse(None, "[DONE]")


# --- POST /v1/embeddings -----------------------------------------------------------------------


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "maxItems": MAX_EMBEDDING_INPUTS,
            },
        ]
    }
)
class EmbeddingInputField(serializers.JSONField):
    """A string or a list of strings (checked by `validate_input`); never null."""


class EmbeddingsRequestSerializer(serializers.Serializer):
    model = StrictCharField(max_length=100)
    input = EmbeddingInputField()
    encoding_format = serializers.ChoiceField(choices=["float"], required=False)

    def validate_input(self, value: Any) -> list[str]:
        inputs = [value] if isinstance(value, str) else value
        if (
            not isinstance(inputs, list)
            or not 1 <= len(inputs) <= MAX_EMBEDDING_INPUTS
            or not all(isinstance(item, str) and item for item in inputs)
        ):
            raise serializers.ValidationError(f"A non-empty string or a list of 1 to {MAX_EMBEDDING_INPUTS} strings.")
        return inputs


@llm_endpoint(openai_style=True)
async def embeddings_create(request: HttpRequest, payload: dict[str, Any]) -> HttpResponseBase:
    data = _validated(EmbeddingsRequestSerializer, payload)
    dispatcher: LLMDispatcher = request.llm  # type: ignore[attr-defined]
    result = await dispatcher.embeddings(model=data["model"], inputs=data["input"])
    return JsonResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": vector}
                for index, vector in enumerate(result.vectors)
            ],
            "model": result.model.id,
            "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens},
            "niyra_routing": _routing(result.model.id, result.model.provider, "platform", result.credits_charged),
        }
    )


# --- Models and preferences (DRF) --------------------------------------------------------------


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


class OpenAIModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class OpenAIModelListApi(APIView):
    """OpenAI's `GET /v1/models`: the chat and embeddings models this user can call now."""

    class OutputSerializer(serializers.Serializer):
        object = serializers.CharField()
        data = OpenAIModelSerializer(many=True)  # type: ignore[assignment]  # a field, not .data

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        data = [
            {"id": item.model.id, "object": "model", "created": 0, "owned_by": item.model.provider}
            for item in model_availability_list(user=request_user(request))
            if item.available and item.model.kind in (Kind.CHAT, Kind.EMBEDDINGS)
        ]
        return Response({"object": "list", "data": data})


class PreferencesApi(APIView):
    class PreferencesSerializer(serializers.Serializer):
        fallback_to_credits = StrictBooleanField()

    @extend_schema(responses=PreferencesSerializer)
    def get(self, request: Request) -> Response:
        preference = RoutingPreference.objects.filter(user=request_user(request)).first()
        return Response({"fallback_to_credits": bool(preference and preference.fallback_to_credits)})

    @extend_schema(request=PreferencesSerializer, responses=PreferencesSerializer)
    def put(self, request: Request) -> Response:
        payload = self.PreferencesSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        preference = routing_preference_set(
            user=request_user(request), fallback_to_credits=payload.validated_data["fallback_to_credits"]
        )
        return Response({"fallback_to_credits": preference.fallback_to_credits})


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


class NativeResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField()
    content = serializers.CharField(allow_blank=True)
    stop_reason = serializers.CharField()
    usage = UsageSerializer()
    routing = RoutingInfoSerializer()


class ChatCompletionResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = serializers.ListField(child=serializers.DictField())
    usage = serializers.DictField()
    niyra_routing = RoutingInfoSerializer()


class EmbeddingsResponseSerializer(serializers.Serializer):
    object = serializers.CharField()
    data = serializers.ListField(child=serializers.DictField())  # type: ignore[assignment]
    model = serializers.CharField()
    usage = serializers.DictField()
    niyra_routing = RoutingInfoSerializer()


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


class ChatCompletionsSchema(_SchemaOnly):
    @extend_schema(
        operation_id="openai_chat_completions_create",
        request=ChatCompletionRequestSerializer,
        responses={200: ChatCompletionResponseSerializer, (200, "text/event-stream"): SSE},
        description="OpenAI-compatible chat completions (JSON and streaming) for every catalog chat model.",
    )
    def post(self, request: Request) -> Response:  # pragma: no cover
        raise NotImplementedError


class EmbeddingsSchema(_SchemaOnly):
    @extend_schema(
        operation_id="openai_embeddings_create",
        request=EmbeddingsRequestSerializer,
        responses={200: EmbeddingsResponseSerializer},
        description="OpenAI-compatible embeddings. Always paid in credits (BYOK covers LLM calls only).",
    )
    def post(self, request: Request) -> Response:  # pragma: no cover
        raise NotImplementedError


for _view, _schema in (
    (messages_create, MessagesSchema),
    (chat_completions, ChatCompletionsSchema),
    (embeddings_create, EmbeddingsSchema),
):
    _view.cls = _schema  # type: ignore[attr-defined]
    _view.initkwargs = {}  # type: ignore[attr-defined]
