"""Images in, audio out and audio in: the sandbox's deterministic rules for media.

* Images (Anthropic ``image`` blocks, OpenAI ``image_url`` / ``input_image`` parts) count
  :data:`IMAGE_TOKENS` input tokens each. Base64 data must decode and start with the magic bytes
  of its media type (PNG, JPEG, GIF or WebP), as the real APIs check; :data:`TINY_PNG` is a valid
  1x1 PNG for tests. URLs are accepted (http/https), never fetched.
* OpenAI ``input_audio`` parts count :data:`AUDIO_INPUT_TOKENS` (reported as audio tokens).
* Speech: :func:`speech_audio` -- 24 kHz 16-bit mono, :data:`SPEECH_MS_PER_CHAR` ms of audio per
  input character divided by ``speed``; samples are sha256(input) tiled, so the same input gives
  the same bytes. ``wav`` has a real RIFF header, ``pcm`` is raw samples; mp3 / opus / aac / flac
  start with their format's magic bytes and are an eighth of the PCM size.
* Transcription: :func:`audio_seconds` -- ``max(1, ceil(file bytes / 32000))`` (16 kHz 16-bit mono
  WAV), :data:`AUDIO_TOKENS_PER_SECOND` audio tokens per second.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
from typing import Final

__all__ = [
    "AUDIO_INPUT_TOKENS",
    "AUDIO_TOKENS_PER_SECOND",
    "IMAGE_MEDIA_TYPES",
    "IMAGE_TOKENS",
    "SPEECH_CONTENT_TYPES",
    "SPEECH_MS_PER_CHAR",
    "SPEECH_SAMPLE_RATE",
    "STT_BYTES_PER_SECOND",
    "TINY_PNG",
    "audio_seconds",
    "image_problem",
    "speech_audio",
    "speech_duration_ms",
]

IMAGE_TOKENS: Final = 100
AUDIO_INPUT_TOKENS: Final = 50
IMAGE_MEDIA_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
TINY_PNG: Final = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

SPEECH_SAMPLE_RATE: Final = 24_000
SPEECH_MS_PER_CHAR: Final = 20
SPEECH_CONTENT_TYPES: Final = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_MAGIC: Final = {
    "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64",
    "opus": b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00OpusHead\x01\x01",
    "aac": b"\xff\xf1\x50\x80\x01\x3f\xfc",
    "flac": b"fLaC\x00\x00\x00\x22",
}

STT_BYTES_PER_SECOND: Final = 32_000
AUDIO_TOKENS_PER_SECOND: Final = 10


def _image_magic_ok(media_type: str, head: bytes) -> bool:
    if media_type == "image/png":
        return head.startswith(b"\x89PNG\r\n\x1a\n")
    if media_type == "image/jpeg":
        return head.startswith(b"\xff\xd8\xff")
    if media_type == "image/gif":
        return head.startswith((b"GIF87a", b"GIF89a"))
    return head.startswith(b"RIFF") and head[8:12] == b"WEBP"


def image_problem(media_type: str, data: str) -> str | None:
    """What is wrong with base64 image ``data`` of ``media_type``, or None ("base64" / "mismatch")."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "base64"
    if not raw or not _image_magic_ok(media_type, raw[:12]):
        return "mismatch"
    return None


def speech_duration_ms(text: str, speed: float) -> int:
    """Milliseconds of speech the sandbox produces for ``text`` at ``speed``."""
    return max(1, round(len(text) * SPEECH_MS_PER_CHAR / speed))


def speech_audio(text: str, voice: str, fmt: str, speed: float) -> bytes:
    """Deterministic audio bytes for ``text`` in ``fmt`` (see the module's rules)."""
    samples = SPEECH_SAMPLE_RATE * speech_duration_ms(text, speed) // 1000
    pcm_len = samples * 2
    pattern = hashlib.sha256(f"{voice}\x00{text}".encode("utf-8", "surrogatepass")).digest()
    if fmt in _MAGIC:
        body_len = max(64, pcm_len // 8)
        return _MAGIC[fmt] + (pattern * (body_len // 32 + 1))[:body_len]
    pcm = (pattern * (pcm_len // 32 + 1))[:pcm_len]
    if fmt == "pcm":
        return pcm
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + pcm_len,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        SPEECH_SAMPLE_RATE,
        SPEECH_SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        pcm_len,
    )
    return header + pcm


def audio_seconds(size: int) -> int:
    """Seconds of audio the sandbox hears in an upload of ``size`` bytes."""
    return max(1, math.ceil(size / STT_BYTES_PER_SECOND))
