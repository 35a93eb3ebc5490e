"""One handler per gateway endpoint: read what the client sent, describe the call, serve it.

Each handler turns the request into a `core.Plan` — where it goes upstream, what Niyra must
change in it (the credential always; the model id when the client used a Niyra id; on OpenAI
chat streams the flag that makes the provider report usage) and how the answer is read — and
leaves the rest to `core.serve`. The models endpoints answer from the caller's snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from core import errors
from core.errors import NiyraError
from credits.pricing import Usage
from providers import Provider
from routing.catalog import MODELS, CatalogModel, Kind, resolve
from routing.credentials import ModelAvailability, model_availability
from routing.gateway import metering, translate, upstream
from routing.gateway.auth import Caller
from routing.gateway.core import Exchange, Plan, credential_open, json_object, model_for, serve
from routing.gateway.errors import Shape
from routing.gateway.metering import Surface

CHAT = frozenset({Kind.CHAT})
EMBEDDINGS = frozenset({Kind.EMBEDDINGS})
Handler = Callable[[Exchange, Caller], Awaitable[None]]
METERED_TRANSCRIPT_FORMATS = frozenset({"json", "verbose_json"})
MODELS_CREATED = 1_700_000_000  # a fixed "created" for the OpenAI-shaped list (the catalog has no dates)


@dataclass(frozen=True, slots=True)
class Endpoint:
    methods: tuple[str, ...]
    shape: Shape
    handler: Handler


def _upstream_body(body: bytes, payload: dict[str, Any], model: CatalogModel, **changes: Any) -> bytes:
    """What goes upstream: the body as the client sent it, unless the model id must become the
    provider's own or Niyra must set a field (then re-serialised with every other field kept)."""
    if payload.get("model") == model.vendor_model and not changes:
        return body
    return orjson.dumps(payload | {"model": model.vendor_model} | changes)


def _worst(surface: Surface, payload: dict[str, Any], body: bytes, model: CatalogModel) -> Usage:
    return metering.worst_case(surface, payload, body_bytes=len(body), model=model)


def _stream(payload: dict[str, Any]) -> bool:
    return payload.get("stream") is True


def _passthrough(
    exchange: Exchange,
    *,
    surface: Surface,
    shape: Shape,
    path: str,
    provider: Provider,
    kinds: frozenset[Kind],
    streams: bool = True,
    **options: Any,
) -> Plan:
    """The plan of a JSON call forwarded as sent: the request read, its model checked against
    the surface, its worst case computed (`options`: the Plan's flags for this surface)."""
    payload = json_object(exchange.body)
    model = model_for(payload, provider=provider, kinds=kinds)
    return Plan(
        surface=surface,
        shape=shape,
        path=path,
        body=_upstream_body(exchange.body, payload, model),
        payload=payload,
        model=model,
        stream=streams and _stream(payload),
        worst=_worst(surface, payload, exchange.body, model),
        **options,
    )


# --- Anthropic ---------------------------------------------------------------------------------


async def anthropic_messages(exchange: Exchange, caller: Caller) -> None:
    plan = _passthrough(
        exchange,
        surface=Surface.ANTHROPIC_MESSAGES,
        shape=Shape.ANTHROPIC,
        path="/messages",
        provider=Provider.ANTHROPIC,
        kinds=CHAT,
    )
    await serve(exchange, caller, plan)


async def anthropic_count_tokens(exchange: Exchange, caller: Caller) -> None:
    """Free at the provider: forwarded with the key a call would use, no hold, no bill."""
    payload = json_object(exchange.body)
    model = model_for(payload, provider=Provider.ANTHROPIC, kinds=CHAT)
    await _forward_free(
        exchange, caller, model, "/messages/count_tokens", _upstream_body(exchange.body, payload, model)
    )


async def _forward_free(exchange: Exchange, caller: Caller, model: CatalogModel, path: str, body: bytes) -> None:
    credential, api_key = await credential_open(caller, model, platform_only=False)
    headers = upstream.request_headers(
        model.provider,
        api_key=api_key,
        client_headers=exchange.headers,
        content_type="application/json",
        byok=credential.provider_key is not None,
    )
    del api_key
    try:
        answer = await upstream.send(model.provider, path, body=body, headers=headers, stream=False)
        content = await answer.read()
    except Exception:
        raise NiyraError(errors.PROVIDER_UNAVAILABLE, detail={"provider": model.provider}) from None
    await exchange.respond(answer.status, content, headers=answer.relayed_headers())


# --- OpenAI ------------------------------------------------------------------------------------


def _openai_chat_plan(
    exchange: Exchange, payload: dict[str, Any], model: CatalogModel, *, universal: bool = False
) -> Plan:
    surface = Surface.OPENAI_CHAT
    stream = _stream(payload)
    changes: dict[str, Any] = {}
    hide_usage = False
    if stream:
        options = payload.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        if not asked:
            # The provider reports a stream's usage only when asked; the client never sees the
            # extra chunk it didn't ask for.
            changes["stream_options"] = (options if isinstance(options, dict) else {}) | {"include_usage": True}
            hide_usage = True
    return Plan(
        surface=surface,
        shape=Shape.OPENAI,
        path="/chat/completions",
        body=_upstream_body(exchange.body, payload, model, **changes),
        payload=payload,
        model=model,
        stream=stream,
        hide_usage_chunk=hide_usage,
        in_stream_errors=universal,
        body_receipt=universal,
        worst=_worst(surface, payload, exchange.body, model),
    )


async def openai_chat(exchange: Exchange, caller: Caller) -> None:
    payload = json_object(exchange.body)
    model = model_for(payload, provider=Provider.OPENAI, kinds=CHAT)
    await serve(exchange, caller, _openai_chat_plan(exchange, payload, model))


async def openai_responses(exchange: Exchange, caller: Caller) -> None:
    plan = _passthrough(
        exchange,
        surface=Surface.OPENAI_RESPONSES,
        shape=Shape.OPENAI,
        path="/responses",
        provider=Provider.OPENAI,
        kinds=CHAT,
    )
    await serve(exchange, caller, plan)


async def openai_embeddings(exchange: Exchange, caller: Caller) -> None:
    """Embeddings always cost credits (the product page: BYOK covers LLM calls)."""
    plan = _passthrough(
        exchange,
        surface=Surface.OPENAI_EMBEDDINGS,
        shape=Shape.OPENAI,
        path="/embeddings",
        provider=Provider.OPENAI,
        kinds=EMBEDDINGS,
        streams=False,
        platform_only=True,
    )
    await serve(exchange, caller, plan)


async def openai_speech(exchange: Exchange, caller: Caller) -> None:
    """Text to speech: audio bytes relayed as they come; billed by the characters sent."""
    plan = _passthrough(
        exchange,
        surface=Surface.OPENAI_SPEECH,
        shape=Shape.OPENAI,
        path="/audio/speech",
        provider=Provider.OPENAI,
        kinds=frozenset({Kind.VOICE_TTS}),
        streams=False,
        platform_only=True,
        raw_relay=True,
    )
    await serve(exchange, caller, plan)


def form_fields(content_type: str, body: bytes) -> dict[str, Any]:
    """The text fields of a multipart upload (files as {"filename", "size"}), to route and meter
    it; the upload itself goes upstream byte for byte."""
    media, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise NiyraError(
            errors.UNSUPPORTED_MEDIA_TYPE, message="Send the audio as multipart/form-data, as the OpenAI SDK does."
        )
    fields: dict[str, Any] = {}
    current: dict[str, Any] = {}

    def on_part_begin() -> None:
        current.clear()
        current.update(headers={}, data=bytearray(), name=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["name"] = data[start:end].lower()

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["headers"][current["name"]] = data[start:end]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"] += data[start:end]

    def on_part_end() -> None:
        _, disposition = parse_options_header(current["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disposition:
            fields[name] = {
                "filename": disposition[b"filename"].decode("utf-8", "replace"),
                "size": len(current["data"]),
            }
        else:
            fields[name] = bytes(current["data"]).decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception:
        raise NiyraError(errors.INVALID_INPUT, detail={"file": ["The multipart upload is malformed."]}) from None
    return fields


async def openai_transcriptions(exchange: Exchange, caller: Caller) -> None:
    """Speech to text: the upload goes upstream as sent; billed from the usage reported."""
    content_type = exchange.headers.get("content-type", "")
    fields = form_fields(content_type, exchange.body)
    model = model_for(fields, provider=Provider.OPENAI, kinds=frozenset({Kind.VOICE_STT}))
    if fields.get("stream") in ("true", "True", "1"):
        raise NiyraError(
            errors.UNSUPPORTED_PARAMETER,
            message="stream can't be used for transcriptions through Niyra yet: send the request without it.",
            detail={"param": "stream"},
        )
    if fields.get("response_format", "json") not in METERED_TRANSCRIPT_FORMATS:
        raise NiyraError(
            errors.UNSUPPORTED_PARAMETER,
            message="response_format: Niyra bills a transcription from the usage the provider reports, "
            "which only json and verbose_json answers carry. Ask for one of those.",
            detail={"param": "response_format"},
        )
    if fields.get("model") != model.vendor_model:
        raise NiyraError(
            errors.MODEL_NOT_SUPPORTED,
            message=f"Send the provider's model id for uploads: {model.vendor_model}.",
            detail={"param": "model"},
        )
    surface = Surface.OPENAI_TRANSCRIPTION
    plan = Plan(
        surface=surface,
        shape=Shape.OPENAI,
        path="/audio/transcriptions",
        body=exchange.body,
        payload=fields,
        model=model,
        stream=False,
        content_type=content_type,
        platform_only=True,
        worst=_worst(surface, fields, exchange.body, model),
    )
    await serve(exchange, caller, plan)


# --- The universal surface ---------------------------------------------------------------------


async def universal_chat(exchange: Exchange, caller: Caller) -> None:
    """OpenAI's format for every model: OpenAI models pass through; Anthropic models are
    translated both ways, and what can't be translated is a 400 naming the parameter."""
    payload = json_object(exchange.body)
    model = model_for(payload, provider=None, kinds=CHAT)
    if model.provider == Provider.OPENAI:
        await serve(exchange, caller, _openai_chat_plan(exchange, payload, model, universal=True))
        return
    try:
        body = translate.chat_to_anthropic(
            payload, vendor_model=model.vendor_model, max_output_tokens=model.max_output_tokens
        )
    except translate.Untranslatable as exc:
        raise NiyraError(
            errors.UNSUPPORTED_PARAMETER, message=f"{exc.param}: {exc.message}", detail={"param": exc.param}
        ) from None
    json_tool = translate.json_tool_name(payload)
    client_model = str(payload["model"])
    options = payload.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    encoded = orjson.dumps(body)
    plan = Plan(
        surface=Surface.ANTHROPIC_MESSAGES,
        shape=Shape.OPENAI,
        path="/messages",
        body=encoded,
        payload=body,
        model=model,
        stream=_stream(payload),
        translator=lambda: translate.AnthropicChatStream(
            client_model, include_usage=include_usage, json_tool=json_tool
        ),
        translate_json=lambda answer: translate.anthropic_to_chat(answer, model=client_model, json_tool=json_tool),
        translate_error=True,
        in_stream_errors=True,
        body_receipt=True,
        worst=_worst(Surface.ANTHROPIC_MESSAGES, body, encoded, model),
    )
    await serve(exchange, caller, plan)


# --- Models ------------------------------------------------------------------------------------


def _availability(caller: Caller, provider: Provider | None) -> list[ModelAvailability]:
    models = [m for m in MODELS if provider is None or m.provider == provider]
    return model_availability(snapshot=caller.snapshot, models=models)


def _niyra_fields(entry: ModelAvailability) -> dict[str, Any]:
    return {
        "available": entry.available,
        "key_source": entry.key_source,
        "reason_code": entry.reason_code,
        "reason": entry.reason,
        "kind": str(entry.model.kind),
        "provider": str(entry.model.provider),
    }


def _openai_model(entry: ModelAvailability) -> dict[str, Any]:
    return {
        "id": entry.model.id,
        "object": "model",
        "created": MODELS_CREATED,
        "owned_by": str(entry.model.provider),
        "niyra": _niyra_fields(entry),
    }


def _anthropic_model(entry: ModelAvailability) -> dict[str, Any]:
    return {
        "type": "model",
        "id": entry.model.id,
        "display_name": entry.model.label,
        "created_at": "2025-01-01T00:00:00Z",
        "niyra": _niyra_fields(entry),
    }


def _model_entry(caller: Caller, model_id: str, provider: Provider | None) -> ModelAvailability:
    model = resolve(model_id)
    if provider is not None and model.provider != provider:
        raise NiyraError(errors.MODEL_NOT_SUPPORTED, detail={"model": model_id[:100], "param": "model"})
    for entry in _availability(caller, model.provider):
        if entry.model.id == model.id:
            return entry
    raise NiyraError(errors.APEX_NOT_ENABLED)  # the only model a list leaves out


def models_handler(provider: Provider | None, shape: Shape) -> Handler:
    prefix = {Provider.ANTHROPIC: "/anthropic/v1/models", Provider.OPENAI: "/openai/v1/models"}.get(
        provider,  # type: ignore[arg-type]
        "/v1/models",
    )

    async def handler(exchange: Exchange, caller: Caller) -> None:
        model_id = exchange.path[len(prefix) :].strip("/")
        if model_id:
            entry = _model_entry(caller, model_id, provider)
            body = _anthropic_model(entry) if shape is Shape.ANTHROPIC else _openai_model(entry)
        elif shape is Shape.ANTHROPIC:
            data = [_anthropic_model(e) for e in _availability(caller, provider)]
            body = {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        else:
            body = {"object": "list", "data": [_openai_model(e) for e in _availability(caller, provider)]}
        await exchange.respond(200, orjson.dumps(body))

    return handler


POST = ("POST",)
GET = ("GET",)

# Exact paths; the models paths also take "/{id}" (see `endpoint_for`).
ENDPOINTS: dict[str, Endpoint] = {
    "/anthropic/v1/messages": Endpoint(POST, Shape.ANTHROPIC, anthropic_messages),
    "/anthropic/v1/messages/count_tokens": Endpoint(POST, Shape.ANTHROPIC, anthropic_count_tokens),
    "/anthropic/v1/models": Endpoint(GET, Shape.ANTHROPIC, models_handler(Provider.ANTHROPIC, Shape.ANTHROPIC)),
    "/openai/v1/chat/completions": Endpoint(POST, Shape.OPENAI, openai_chat),
    "/openai/v1/responses": Endpoint(POST, Shape.OPENAI, openai_responses),
    "/openai/v1/embeddings": Endpoint(POST, Shape.OPENAI, openai_embeddings),
    "/openai/v1/audio/speech": Endpoint(POST, Shape.OPENAI, openai_speech),
    "/openai/v1/audio/transcriptions": Endpoint(POST, Shape.OPENAI, openai_transcriptions),
    "/openai/v1/models": Endpoint(GET, Shape.OPENAI, models_handler(Provider.OPENAI, Shape.OPENAI)),
    "/v1/chat/completions": Endpoint(POST, Shape.OPENAI, universal_chat),
    "/v1/embeddings": Endpoint(POST, Shape.OPENAI, openai_embeddings),
    "/v1/models": Endpoint(GET, Shape.OPENAI, models_handler(None, Shape.OPENAI)),
}
MODEL_PATHS = ("/anthropic/v1/models/", "/openai/v1/models/", "/v1/models/")


def endpoint_for(path: str) -> Endpoint | None:
    endpoint = ENDPOINTS.get(path.rstrip("/") if path != "/" else path)
    if endpoint is None:
        for prefix in MODEL_PATHS:
            if path.startswith(prefix) and len(path) > len(prefix):
                return ENDPOINTS[prefix.rstrip("/")]
    return endpoint


def shape_for(path: str) -> Shape:
    return Shape.ANTHROPIC if path.startswith("/anthropic/") else Shape.OPENAI
