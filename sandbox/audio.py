"""The sandbox's OpenAI audio endpoints: ``POST /openai/v1/audio/speech`` (JSON in, audio bytes
out) and ``POST /openai/v1/audio/transcriptions`` (multipart upload in, transcript out).

Speech: audio from :func:`~sandbox.media.speech_audio` (same input, voice, format and speed give
the same bytes), with the format's content type; ``stream_format: "sse"`` (gpt-4o-mini-tts only)
sends ``speech.audio.delta`` events and a ``speech.audio.done`` with token usage (input = words
of ``input`` and ``instructions``, output = ``ceil(milliseconds / 100)``).

Transcription: the text is :data:`~sandbox.replies.REPLY_TEXT`; ``S`` =
:func:`~sandbox.media.audio_seconds` of the file's size. whisper-1 reports ``{"type":
"duration", "seconds": S}``; gpt-4o(-mini)-transcribe reports tokens: audio ``10 * S``, text =
words of ``prompt``, output = 12. ``text`` / ``srt`` / ``vtt`` answers are plain text without
usage; ``verbose_json`` (whisper-1 only) adds segments.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Final

from aiohttp import BodyPartReader, web

from .behaviour import Behaviour
from .media import (
    AUDIO_TOKENS_PER_SECOND,
    SPEECH_CONTENT_TYPES,
    audio_seconds,
    speech_audio,
    speech_duration_ms,
)
from .openai import OpenAIAPI, invalid_response, model_not_found
from .replies import DELTA_TEXT, MAX_OUTPUT, REPLY_TEXT
from .requestlog import LogRecord
from .wire import JSON_CT, Invalid, dumps, finish, read_json, send_body, send_stream

__all__ = ["MAX_SPEECH_CHARS", "MAX_UPLOAD_BYTES", "STT_MODELS", "TTS_MODELS", "VOICES", "AudioAPI"]

TTS_MODELS: Final = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
STT_MODELS: Final = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})
VOICES: Final = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
MAX_SPEECH_CHARS: Final = 4096
MAX_UPLOAD_BYTES: Final = 25 * 1024 * 1024
_STT_FORMATS: Final = ("json", "text", "srt", "verbose_json", "vtt")
_MALFORMED_SSE: Final = b'data: {"type": "speech.audio.de\n\n'
_AUDIO_CHUNK: Final = 4096


def _missing(name: str) -> Invalid:
    return Invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")


def _speech_validate(body: Any) -> tuple[str, str, str, float, str]:
    """(input, voice, format, speed, stream_format) or raise Invalid."""
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object.")
    text = body.get("input")
    if text is None:
        raise _missing("input")
    if not isinstance(text, str):
        raise Invalid("Invalid type for 'input': expected a string.", "input", "invalid_type")
    if len(text) > MAX_SPEECH_CHARS:
        raise Invalid(
            f"Invalid 'input': string too long. Expected a string with maximum length {MAX_SPEECH_CHARS}, but got a "
            f"string with length {len(text)} instead.",
            "input",
            "string_above_max_length",
        )
    voice = body.get("voice")
    if voice is None:
        raise _missing("voice")
    if voice not in VOICES:
        supported = ", ".join(f"'{v}'" for v in VOICES)
        raise Invalid(f"Invalid value: '{voice}'. Supported values are: {supported}.", "voice", "invalid_value")
    fmt = body.get("response_format", "mp3")
    if fmt not in SPEECH_CONTENT_TYPES:
        raise Invalid(
            f"Invalid value: '{fmt}'. Supported values are: 'mp3', 'opus', 'aac', 'flac', 'wav', and 'pcm'.",
            "response_format",
            "invalid_value",
        )
    speed = body.get("speed", 1.0)
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4.0:
        raise Invalid(
            f"Invalid 'speed': expected a number between 0.25 and 4.0, but got {speed} instead.",
            "speed",
            "invalid_value",
        )
    stream_format = body.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        raise Invalid(
            f"Invalid value: '{stream_format}'. Supported values are: 'sse' and 'audio'.",
            "stream_format",
            "invalid_value",
        )
    if stream_format == "sse" and body.get("model") != "gpt-4o-mini-tts":
        raise Invalid("stream_format 'sse' is not supported for this model.", "stream_format", "unsupported_value")
    return text, voice, fmt, float(speed), stream_format


async def _read_form(request: web.Request) -> tuple[dict[str, Any], bytes | None]:
    """The multipart fields (files as ``{"filename", "size", "content_type"}``; repeated fields as
    lists) and the bytes of the ``file`` field."""
    fields: dict[str, Any] = {}
    data: bytes | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.filename is not None:
            content = await part.read()
            value: Any = {
                "filename": part.filename,
                "size": len(content),
                "content_type": part.headers.get("Content-Type"),
            }
            if part.name == "file":
                data = bytes(content)
        else:
            value = await part.text()
        if part.name in fields:
            previous = fields[part.name]
            fields[part.name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            fields[part.name] = value
    return fields, data


def _sse_data(data: dict[str, Any]) -> bytes:
    return f"data: {dumps(data)}\n\n".encode()


def _timestamp(seconds: float, sep: str) -> str:
    whole = int(seconds)
    millis = round((seconds - whole) * 1000)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}{sep}{millis:03d}"


def _usage(fields: dict[str, Any], model: str, seconds: int) -> dict[str, Any]:
    """What a transcription reports: seconds for whisper-1, tokens for the gpt-4o models."""
    if model == "whisper-1":
        return {"type": "duration", "seconds": seconds}
    audio = AUDIO_TOKENS_PER_SECOND * seconds
    prompt = fields.get("prompt")
    text_tokens = len(prompt.split()) if isinstance(prompt, str) else 0
    return {
        "type": "tokens",
        "input_tokens": audio + text_tokens,
        "input_token_details": {"audio_tokens": audio, "text_tokens": text_tokens},
        "output_tokens": MAX_OUTPUT,
        "total_tokens": audio + text_tokens + MAX_OUTPUT,
    }


def _transcript(fields: dict[str, Any], fmt: str, seconds: int, usage: dict[str, Any]) -> tuple[bytes, str]:
    """The transcription body and its content type."""
    if fmt == "text":
        return (REPLY_TEXT + "\n").encode(), "text/plain; charset=utf-8"
    if fmt == "srt":
        return (
            f"1\n{_timestamp(0, ',')} --> {_timestamp(seconds, ',')}\n{REPLY_TEXT}\n\n".encode(),
            "text/plain; charset=utf-8",
        )
    if fmt == "vtt":
        body = f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(seconds, '.')}\n{REPLY_TEXT}\n\n"
        return body.encode(), "text/vtt; charset=utf-8"
    if fmt == "json":
        return dumps({"text": REPLY_TEXT, "usage": usage}).encode(), JSON_CT
    payload: dict[str, Any] = {
        "task": "transcribe",
        "language": fields.get("language") or "english",
        "duration": float(seconds),
        "text": REPLY_TEXT,
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": float(seconds),
                "text": REPLY_TEXT,
                "tokens": list(range(50364, 50364 + MAX_OUTPUT)),
                "temperature": 0.0,
                "avg_logprob": -0.2,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.01,
            }
        ],
        "usage": usage,
    }
    granularities = fields.get("timestamp_granularities[]")
    if granularities == "word" or (isinstance(granularities, list) and "word" in granularities):
        step = seconds / MAX_OUTPUT
        payload["words"] = [
            {"word": w.strip(), "start": round(i * step, 2), "end": round((i + 1) * step, 2)}
            for i, w in enumerate(DELTA_TEXT)
        ]
    return dumps(payload).encode(), JSON_CT


class AudioAPI:
    """The speech and transcription handlers (authentication and errors shared with chat)."""

    def __init__(self, openai: OpenAIAPI) -> None:
        self.openai = openai
        self.ids = openai.ids

    async def speech(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        record, b, early = await self.openai.prologue(request, body)
        if early is not None:
            return finish(record, early)
        model = body.get("model") if isinstance(body, dict) else None
        try:
            if model is None:
                raise _missing("model")
            if model not in TTS_MODELS:
                return finish(record, model_not_found(str(model)))
            text, voice, fmt, speed, stream_format = _speech_validate(body)
        except Invalid as exc:
            return finish(record, invalid_response(exc))
        audio = speech_audio(text, voice, fmt, speed)
        headers = {"Content-Type": SPEECH_CONTENT_TYPES[fmt], "x-request-id": self.ids.next("req_")}
        if stream_format == "audio":
            return await send_body(request, record, b, audio, headers)
        instructions = body.get("instructions")
        input_tokens = len(text.split()) + (len(instructions.split()) if isinstance(instructions, str) else 0)
        output_tokens = math.ceil(speech_duration_ms(text, speed) / 100)
        pieces = [
            _sse_data({"type": "speech.audio.delta", "audio": base64.b64encode(audio[i : i + _AUDIO_CHUNK]).decode()})
            for i in range(0, len(audio), _AUDIO_CHUNK)
        ]
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        tail = _sse_data({"type": "speech.audio.done", "usage": usage})
        return await send_stream(
            request, record, b, headers, head=b"", deltas=pieces, tail=tail, malformed=_MALFORMED_SSE
        )

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        fields: dict[str, Any] | None = None
        data: bytes | None = None
        if request.content_type == "multipart/form-data":
            fields, data = await _read_form(request)
        else:
            await request.read()
        record, b, early = await self.openai.prologue(request, fields)
        if early is not None:
            return finish(record, early)
        if fields is None:
            exc = Invalid("Invalid Content-Type header: expected multipart/form-data.", None, "invalid_value")
            return finish(record, invalid_response(exc))
        record.stream = fields.get("stream") == "true"
        return await self._transcribe(request, record, b, fields, data)

    async def _transcribe(
        self, request: web.Request, record: LogRecord, b: Behaviour, fields: dict[str, Any], data: bytes | None
    ) -> web.StreamResponse:
        model = fields.get("model")
        fmt = fields.get("response_format", "json")
        try:
            if model is None:
                raise _missing("model")
            if model not in STT_MODELS:
                return finish(record, model_not_found(str(model)))
            if data is None:
                raise _missing("file")
            if len(data) > MAX_UPLOAD_BYTES:
                raise Invalid(
                    f"Maximum content size limit ({MAX_UPLOAD_BYTES}) exceeded ({len(data)} bytes read)", "file", None
                )
            if fmt not in _STT_FORMATS:
                raise Invalid(
                    f"Invalid value: '{fmt}'. Supported values are: 'json', 'text', 'srt', 'verbose_json', and 'vtt'.",
                    "response_format",
                    "invalid_value",
                )
            if model != "whisper-1" and fmt not in ("json", "text"):
                raise Invalid(
                    f"response_format '{fmt}' is not compatible with model '{model}'. Use 'json' or 'text'.",
                    "response_format",
                    "unsupported_value",
                )
        except Invalid as exc:
            return finish(record, invalid_response(exc))
        seconds = audio_seconds(len(data))
        usage = _usage(fields, str(model), seconds)
        payload, content_type = _transcript(fields, str(fmt), seconds, usage)
        headers = {"Content-Type": content_type, "x-request-id": self.ids.next("req_")}
        if not record.stream or model == "whisper-1":
            return await send_body(request, record, b, payload, headers)
        pieces = [_sse_data({"type": "transcript.text.delta", "delta": d, "logprobs": None}) for d in DELTA_TEXT]
        done = {"type": "transcript.text.done", "text": REPLY_TEXT, "logprobs": None, "usage": usage}
        tail = _sse_data(done)
        return await send_stream(
            request, record, b, headers, head=b"", deltas=pieces, tail=tail, malformed=_MALFORMED_SSE
        )
