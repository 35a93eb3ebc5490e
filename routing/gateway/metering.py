"""What a routed call may cost at most, and what it did cost, from the provider's own reports.

Pure code on the hot path of every call: no I/O, no settings. Three jobs:

- `worst_case`: a true upper bound of a call's usage, computed from the request as sent, for
  the credit hold. Input: every UTF-8 byte of the body can be at most one token (a token is at
  least one byte of text, and JSON only adds bytes: quotes, keys, escapes), except media, whose
  bytes say nothing about their tokens; so their data is taken out and a per-item ceiling put
  in (the constants below say where each comes from). Output: the request's own limit, or the
  model's ceiling. Priced at the uncached input rate, so no cache fields are set.
- `usage_from_response`: the usage of a non-streamed answer, as the provider reported it, or
  None when it reported none (the gateway then falls back to an estimate).
- `SseSplitter` and `StreamMeter`: events cut out of the upstream bytes exactly as received (so
  they are relayed unchanged), and the usage read from the few events that carry it. Events
  that can't carry usage are recognised by their bytes, never parsed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from credits.pricing import Usage
from providers import Provider
from routing.catalog import CatalogModel


class Surface(StrEnum):
    ANTHROPIC_MESSAGES = "anthropic.messages"
    ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens"
    OPENAI_CHAT = "openai.chat"
    OPENAI_RESPONSES = "openai.responses"
    OPENAI_EMBEDDINGS = "openai.embeddings"
    OPENAI_SPEECH = "openai.speech"
    OPENAI_TRANSCRIPTION = "openai.transcription"


STREAMED_SURFACES = frozenset({Surface.ANTHROPIC_MESSAGES, Surface.OPENAI_CHAT, Surface.OPENAI_RESPONSES})

# --- Ceilings of the worst case ---------------------------------------------------------------

# Per message: the chat template's role markers and separators (OpenAI's is 3-4 tokens a
# message plus 3 to prime the reply; Anthropic's "Human:"/"Assistant:" turns are fewer). One more
# is counted for the system prompt and the reply.
MESSAGE_OVERHEAD_TOKENS = 8
# Tools present: Anthropic adds a tool-use system prompt (346 tokens on Claude 4 with
# tool_choice auto/none, 313 with any/tool); OpenAI wraps function definitions in a namespace.
TOOLS_OVERHEAD_TOKENS = 500
# Each Anthropic-defined tool (`{"type": "computer_20250124", ...}`) is a few bytes in the
# request but a long definition at the provider: computer use 735 tokens plus its system
# prompt (~500), text editor 700, bash 245.
ANTHROPIC_DEFINED_TOOL_TOKENS = 1_500

# Anthropic images: the API resizes an image until it fits its model's tier, then charges its
# visual tokens. Standard tier (models before Opus 4.7): long edge <= 1,568 px and about 1,600
# tokens of w*h/750 (count_tokens gives up to ~1,660 with the block's own tokens); 1,800 leaves
# a margin. High tier (Opus 4.7 and later, Fable): ceil(w/28)*ceil(h/28) <= 4,784 visual
# tokens plus the block's few.
ANTHROPIC_IMAGE_TOKENS_STANDARD = 1_800
ANTHROPIC_IMAGE_TOKENS_HIGH = 4_800
ANTHROPIC_STANDARD_IMAGE_MODELS = (
    "claude-sonnet-4",
    "claude-haiku-4",
    "claude-opus-4-0",
    "claude-opus-4-1",
    "claude-opus-4-5",
    "claude-opus-4-6",
    "claude-opus-4-2025",  # claude-opus-4-20250514, the dated id of Opus 4
)
# OpenAI images, the most any detail level can cost. Tiles (fit 2048, short side 768, 512 px
# tiles, at most 8): gpt-4o/4.1 85 + 170 x 8 = 1,445; gpt-5 70 + 140 x 8 = 1,190. Patches (32 px,
# at most 1,536, times the model's multiplier): gpt-4.1-mini/gpt-5-mini x1.62 = 2,489,
# gpt-4.1-nano/gpt-5-nano x2.46 = 3,779, the largest, taken for every model but one:
# gpt-4o-mini bills images as gpt-4o costs them, 2,833 + 5,667 x 8 = 48,169 tokens.
OPENAI_IMAGE_TOKENS = 3_779
OPENAI_IMAGE_TOKENS_GPT_4O_MINI = 48_169

# Audio: an upload's length is bounded by its size over the lowest bitrate a codec OpenAI
# decodes is run at (Opus, 6 kbit/s; MP3's floor is 8). Audio input is 10 tokens a second
# (one per 100 ms). gpt-4o-transcribe writes at most 2,000 tokens.
AUDIO_MIN_BYTES_PER_SECOND = 750
AUDIO_TOKENS_PER_SECOND = 10
TRANSCRIPTION_OUTPUT_TOKENS = 2_000

# The estimate for a stream cut before the provider reported its usage (the dispatcher's rule).
CHARS_PER_TOKEN_TYPICAL = 4

_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def worst_case(surface: Surface, body: dict[str, Any], *, body_bytes: int, model: CatalogModel) -> Usage:
    """The most this request can use. A limit the provider would refuse (not a positive int)
    counts as absent: the hold is the model's ceiling, and the provider's own error answers.

    Beyond any request-side bound: what the provider adds on its side (server tools' results:
    web search and fetch, file search) and PDF pages, whose bytes stay counted (a bound for
    their text, not for their page images). The settle charges what is reported regardless."""
    if surface is Surface.ANTHROPIC_COUNT_TOKENS:
        return Usage()  # free at the provider: no hold
    if surface is Surface.OPENAI_EMBEDDINGS:
        return Usage(input_tokens=body_bytes)  # token-id arrays too: each id is >= 1 byte
    if surface is Surface.OPENAI_SPEECH:
        text = body.get("input")
        return Usage(characters=len(text) if isinstance(text, str) else 0)
    if surface is Surface.OPENAI_TRANSCRIPTION:
        return _transcription_worst(body, body_bytes)

    media = _media_in(body, model)
    input_tokens = max(body_bytes - media.data_bytes, 0) + media.tokens
    input_tokens += _overhead_tokens(body, surface)
    if surface is Surface.ANTHROPIC_MESSAGES:
        output = _count(body.get("max_tokens")) or model.max_output_tokens  # thinking is inside
    elif surface is Surface.OPENAI_CHAT:
        limit = _count(body.get("max_completion_tokens")) or _count(body.get("max_tokens"))
        output = (limit or model.max_output_tokens) * (_count(body.get("n")) or 1)
    else:
        output = _count(body.get("max_output_tokens")) or model.max_output_tokens
    audio_out = output if _wants_audio(body) else 0
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output,
        audio_input_tokens=media.audio_tokens,
        audio_output_tokens=audio_out,
    )


def _transcription_worst(body: dict[str, Any], body_bytes: int) -> Usage:
    seconds = -(-body_bytes // AUDIO_MIN_BYTES_PER_SECOND)
    audio = seconds * AUDIO_TOKENS_PER_SECOND
    prompt = body.get("prompt")
    prompt_tokens = len(prompt.encode()) if isinstance(prompt, str) else 0
    return Usage(
        input_tokens=audio + prompt_tokens,
        output_tokens=TRANSCRIPTION_OUTPUT_TOKENS,
        audio_input_tokens=audio,
        seconds=seconds,
    )


@dataclass(slots=True)
class _Media:
    data_bytes: int = 0  # base64 bytes in the body, not tokens
    tokens: int = 0  # their ceilings instead
    audio_tokens: int = 0


def _media_in(body: dict[str, Any], model: CatalogModel) -> _Media:
    """Images and audio in the conversation's content: message content, tool results and
    function outputs, documents' content. Only content positions are walked, where a typed
    block is what it says (tool inputs and arguments are text, whatever their shape), and
    without recursion, so a deeply nested body can't overflow the stack."""
    media = _Media()
    image_tokens = _image_ceiling(model)
    stack: list[Any] = [body.get("messages"), body.get("input"), body.get("system")]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _IMAGE_TYPES:
                media.tokens += image_tokens
                media.data_bytes += _image_data_bytes(node)
            elif kind == "input_audio":
                audio = node.get("input_audio")
                data = audio.get("data") if isinstance(audio, dict) else None
                if isinstance(data, str):
                    tokens = -(-(len(data) * 3 // 4) // AUDIO_MIN_BYTES_PER_SECOND) * AUDIO_TOKENS_PER_SECOND
                    media.data_bytes += len(data)
                    media.tokens += tokens
                    media.audio_tokens += tokens
            else:
                stack.extend((node.get("content"), node.get("output"), node.get("source")))
    return media


def _image_data_bytes(node: dict[str, Any]) -> int:
    """The bytes of inline image data (a URL is left in: its few bytes only add)."""
    source = node.get("source")  # Anthropic: {"type": "base64", "data": ...}
    if isinstance(source, dict):
        data = source.get("data")
        return len(data) if isinstance(data, str) else 0
    url = node.get("image_url")  # OpenAI chat: {"url": ...}; Responses: the string itself
    if isinstance(url, dict):
        url = url.get("url")
    return len(url) if isinstance(url, str) and url.startswith("data:") else 0


def _image_ceiling(model: CatalogModel) -> int:
    """By the model, not the surface: the universal surface sends images to Anthropic too."""
    if model.provider == Provider.ANTHROPIC:
        if model.vendor_model.startswith(ANTHROPIC_STANDARD_IMAGE_MODELS):
            return ANTHROPIC_IMAGE_TOKENS_STANDARD
        return ANTHROPIC_IMAGE_TOKENS_HIGH  # newer and unknown models: the larger tier
    if model.vendor_model.startswith("gpt-4o-mini"):
        return OPENAI_IMAGE_TOKENS_GPT_4O_MINI
    return OPENAI_IMAGE_TOKENS


def _overhead_tokens(body: dict[str, Any], surface: Surface) -> int:
    turns = body.get("messages") if surface is not Surface.OPENAI_RESPONSES else body.get("input")
    count = len(turns) if isinstance(turns, list) else 1
    tokens = (count + 2) * MESSAGE_OVERHEAD_TOKENS  # + the system prompt and the reply
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        tokens += TOOLS_OVERHEAD_TOKENS
        if surface is Surface.ANTHROPIC_MESSAGES:
            defined = sum(1 for tool in tools if isinstance(tool, dict) and tool.get("type") not in (None, "custom"))
            tokens += defined * ANTHROPIC_DEFINED_TOOL_TOKENS
    return tokens


def _wants_audio(body: dict[str, Any]) -> bool:
    modalities = body.get("modalities")
    return isinstance(modalities, list) and "audio" in modalities


def _count(value: object, default: int = 0) -> int:
    """A count as sent or reported (an int, not a bool, not negative); else `default`."""
    return value if type(value) is int and value >= 0 else default


# --- Usage of a whole answer ------------------------------------------------------------------


def usage_from_response(surface: Surface, payload: dict[str, Any], *, request_body: dict[str, Any]) -> Usage | None:
    """The usage the provider reported in a JSON answer, or None when it reported none (or
    none that can be read), so the gateway can fall back to an estimate rather than bill 0.

    Speech answers are audio bytes: its usage is the characters asked for (pass payload={}).
    A token count is free at Anthropic: Usage(), nothing to bill."""
    if surface is Surface.OPENAI_SPEECH:
        text = request_body.get("input")
        return Usage(characters=len(text)) if isinstance(text, str) else None
    if surface is Surface.ANTHROPIC_COUNT_TOKENS:
        return Usage()
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    if surface is Surface.ANTHROPIC_MESSAGES:
        return _anthropic_usage(usage)
    if surface is Surface.OPENAI_CHAT:
        return _chat_usage(usage)
    if surface is Surface.OPENAI_RESPONSES:
        return _responses_usage(usage)
    if surface is Surface.OPENAI_EMBEDDINGS:
        tokens = usage.get("prompt_tokens")
        return Usage(input_tokens=tokens) if type(tokens) is int and tokens >= 0 else None
    return _transcription_usage(usage)


def _reported(usage: dict[str, Any], *names: str) -> bool:
    return all(type(usage.get(name)) is int for name in names)


def _details(usage: dict[str, Any], name: str) -> dict[str, Any]:
    details = usage.get(name)
    return details if isinstance(details, dict) else {}


def _anthropic_usage(usage: dict[str, Any]) -> Usage | None:
    if not _reported(usage, "input_tokens", "output_tokens"):
        return None
    written = _count(usage.get("cache_creation_input_tokens"))
    read = _count(usage.get("cache_read_input_tokens"))
    return Usage(
        input_tokens=_count(usage["input_tokens"]) + written + read,
        output_tokens=_count(usage["output_tokens"]),  # thinking included; not reported apart
        cached_tokens=read,
        cache_write_tokens=written,
    )


def _chat_usage(usage: dict[str, Any]) -> Usage | None:
    if not _reported(usage, "prompt_tokens", "completion_tokens"):
        return None
    prompt = _details(usage, "prompt_tokens_details")
    completion = _details(usage, "completion_tokens_details")
    return Usage(
        input_tokens=_count(usage["prompt_tokens"]),
        output_tokens=_count(usage["completion_tokens"]),
        cached_tokens=_count(prompt.get("cached_tokens")),
        reasoning_tokens=_count(completion.get("reasoning_tokens")),
        audio_input_tokens=_count(prompt.get("audio_tokens")),
        audio_output_tokens=_count(completion.get("audio_tokens")),
    )


def _responses_usage(usage: dict[str, Any]) -> Usage | None:
    if not _reported(usage, "input_tokens", "output_tokens"):
        return None
    return Usage(
        input_tokens=_count(usage["input_tokens"]),
        output_tokens=_count(usage["output_tokens"]),
        cached_tokens=_count(_details(usage, "input_tokens_details").get("cached_tokens")),
        reasoning_tokens=_count(_details(usage, "output_tokens_details").get("reasoning_tokens")),
    )


def _transcription_usage(usage: dict[str, Any]) -> Usage | None:
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < 1e12:
            return None
        return Usage(seconds=math.ceil(seconds))  # a started second counts whole
    if not _reported(usage, "input_tokens", "output_tokens"):
        return None
    return Usage(
        input_tokens=_count(usage["input_tokens"]),
        output_tokens=_count(usage["output_tokens"]),
        audio_input_tokens=_count(_details(usage, "input_token_details").get("audio_tokens")),
    )


# --- Server-sent events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SseEvent:
    raw: bytes  # exactly as received, its terminating blank line included
    event: str | None
    data: bytes


class SseSplitter:
    """Cuts a byte stream into events at blank lines. Providers end lines with LF; CRLF (and a
    mix) is handled too, on a slower path taken once a CR has been seen."""

    __slots__ = ("_buffer", "_cr", "_scanned")

    def __init__(self) -> None:
        self._buffer = b""
        self._scanned = 0  # bytes of the buffer already searched for an event's end
        self._cr = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if not self._cr and b"\r" in chunk:
            self._cr = True
        buffer = self._buffer + chunk if self._buffer else bytes(chunk)
        scan = max(self._scanned - 2, 0)  # an end may straddle the previous chunk
        events: list[SseEvent] = []
        start = 0
        if self._cr:
            for end in _event_ends(buffer, scan):
                events.append(_parse_event(buffer[start:end], cr=True))
                start = end
        else:
            while (end := buffer.find(b"\n\n", scan)) >= 0:
                scan = end + 2
                events.append(_parse_event(buffer[start:scan], cr=False))
                start = scan
        self._buffer = buffer[start:] if start else buffer
        self._scanned = len(self._buffer)
        return events

    def flush(self) -> list[SseEvent]:
        """What is left when the stream ends: an event without its blank line, if any."""
        rest, self._buffer, self._scanned = self._buffer, b"", 0
        return [_parse_event(rest, cr=True)] if rest.strip() else []


def _event_ends(buffer: bytes, scan: int) -> list[int]:
    """Where events end from `scan` on: a line end then an empty line is LF LF or LF CRLF
    (CRLF CRLF and CRLF LF contain one of them)."""
    ends: list[int] = []
    lf = buffer.find(b"\n\n", scan)
    crlf = buffer.find(b"\n\r\n", scan)
    while lf >= 0 or crlf >= 0:
        scan = crlf + 3 if crlf >= 0 and (lf < 0 or crlf < lf) else lf + 2
        ends.append(scan)
        if 0 <= lf < scan:
            lf = buffer.find(b"\n\n", scan)
        if 0 <= crlf < scan:
            crlf = buffer.find(b"\n\r\n", scan)
    return ends


def _parse_event(raw: bytes, *, cr: bool) -> SseEvent:
    if not cr and (common := _common_shape(raw)) is not None:
        return common
    event: str | None = None
    data: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    return SseEvent(raw=raw, event=event, data=b"\n".join(data))


def _common_shape(raw: bytes) -> SseEvent | None:
    """The two shapes providers send, with LF line ends: "data: X" (OpenAI chat) and "event: N"
    then "data: X" (Anthropic, Responses), read without splitting lines; None for any other."""
    last = len(raw) - 2
    if not raw.endswith(b"\n\n"):
        return None
    if raw.startswith(b"data: ") and raw.find(b"\n") == last:
        return SseEvent(raw, None, raw[6:last])
    if raw.startswith(b"event: "):
        line_end = raw.find(b"\n")
        if raw.startswith(b"data: ", line_end + 1) and raw.find(b"\n", line_end + 1) == last:
            return SseEvent(raw, raw[7:line_end].decode("utf-8", "replace"), raw[line_end + 7 : last])
    return None


# --- Stream meters ----------------------------------------------------------------------------

# Byte markers: a quoted name can only be a key or a type in these events, never part of a
# string value (a quote inside a JSON string is escaped), so a match is the real thing. The
# providers (and the sandbox) send compact JSON: where a space after a colon would hide a
# marker, only the estimate of a cut stream's output is affected, never a reported usage.
_CHAT_TEXT_KEYS = (b'"content":"', b'"arguments":"', b'"refusal":"')
_RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class StreamMeter:
    """Reads one stream's usage from its events' data, and counts what it generated in case the
    stream ends before the provider reports its usage."""

    __slots__ = ("_final", "_request", "complete", "output_deltas", "surface", "usage")

    def __init__(self, surface: Surface, request_body: dict[str, Any]) -> None:
        if surface not in STREAMED_SURFACES:
            raise ValueError(f"{surface} is not a streamed surface")
        self.surface = surface
        self._request = request_body
        self.usage = Usage()
        self.complete = False
        self.output_deltas = 0
        self._final = False  # the provider reported the call's whole usage

    def observe(self, data: bytes) -> bool:
        """Reads one event's data; True exactly when it is OpenAI chat's usage-only chunk
        (which the gateway drops when the client did not ask for usage)."""
        if self.surface is Surface.OPENAI_CHAT:
            return self._chat(data)
        if self.surface is Surface.ANTHROPIC_MESSAGES:
            self._anthropic(data)
        else:
            self._responses(data)
        return False

    def _anthropic(self, data: bytes) -> None:
        if b'"text_delta"' in data or b'"input_json_delta"' in data or b'"thinking_delta"' in data:
            self.output_deltas += 1
        elif b'"message_start"' in data:
            message = _loads(data).get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self.usage = _anthropic_update(self.usage, usage)
        elif b'"message_delta"' in data:
            usage = _loads(data).get("usage")
            if isinstance(usage, dict) and type(usage.get("output_tokens")) is int:
                self.usage = _anthropic_update(self.usage, usage)
                self._final = True
        elif b'"message_stop"' in data:
            self.complete = True

    def _chat(self, data: bytes) -> bool:
        if data == b"[DONE]":
            self.complete = True
            return False
        at = data.rfind(b'"usage":')  # the chunk's last key
        if at < 0 or data[at + 8 : at + 9] == b"n":  # no usage, or the "usage":null of other chunks
            if _chat_delta(data):
                self.output_deltas += 1
            return False
        chunk = _loads(data)
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and _chat_delta(data):
            self.output_deltas += 1
        usage = chunk.get("usage")
        reported = _chat_usage(usage) if isinstance(usage, dict) else None
        if reported is None:
            return False
        self.usage, self._final = reported, True
        return choices == []

    def _responses(self, data: bytes) -> None:
        if b'"response.output_text.delta"' in data or b'"response.function_call_arguments.delta"' in data:
            self.output_deltas += 1
        elif b'"response.completed"' in data or b'"response.incomplete"' in data or b'"response.failed"' in data:
            event = _loads(data)
            if event.get("type") not in _RESPONSES_ENDS:
                return
            self.complete = True
            response = event.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
            reported = _responses_usage(usage) if isinstance(usage, dict) else None
            if reported is not None:
                self.usage, self._final = reported, True

    def final_usage(self) -> Usage:
        """The usage the provider reported, even if the stream was cut after it. Otherwise the
        dispatcher's rule for a cut stream: nothing generated costs nothing; else the input
        reported so far (or the prompt's characters / 4) and one token a delta received, up to
        the request's output limit."""
        if self._final:
            return self.usage
        if not self.output_deltas:
            return Usage()
        usage = self.usage
        output = max(usage.output_tokens, self.output_deltas)
        limit = _output_limit(self._request)
        if limit:
            output = min(output, limit)
        if usage.input_tokens:
            return Usage(
                input_tokens=usage.input_tokens,
                output_tokens=output,
                cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            )
        input_tokens = -(-_prompt_characters(self._request) // CHARS_PER_TOKEN_TYPICAL)
        return Usage(input_tokens=input_tokens, output_tokens=output)


def _loads(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _anthropic_update(current: Usage, usage: dict[str, Any]) -> Usage:
    """message_start's usage, then message_delta's: output is cumulative; input and cache
    fields replace the earlier ones when the event carries them."""
    fresh = _count(usage.get("input_tokens"), current.input_tokens - current.cache_write_tokens - current.cached_tokens)
    written = _count(usage.get("cache_creation_input_tokens"), current.cache_write_tokens)
    read = _count(usage.get("cache_read_input_tokens"), current.cached_tokens)
    return Usage(
        input_tokens=fresh + written + read,
        output_tokens=_count(usage.get("output_tokens"), current.output_tokens),
        cached_tokens=read,
        cache_write_tokens=written,
    )


def _chat_delta(data: bytes) -> bool:
    """The chunk carries generated text: a non-empty content, tool-call arguments or refusal
    (OpenAI streams one choice a chunk, in compact JSON)."""
    for key in _CHAT_TEXT_KEYS:
        at = data.find(key)
        if at >= 0 and data[at + len(key) : at + len(key) + 1] != b'"':
            return True
    return False


def _output_limit(body: dict[str, Any]) -> int:
    for name in _OUTPUT_LIMIT_FIELDS:
        if limit := _count(body.get(name)):
            return limit * (_count(body.get("n")) or 1)
    return 0


def _prompt_characters(body: dict[str, Any]) -> int:
    """The characters of the prompt's text: system, instructions, messages or input (text
    parts, tool results), the way the dispatcher estimated a cut stream's input."""
    total = 0
    stack: list[Any] = [body.get("system"), body.get("instructions"), body.get("messages"), body.get("input")]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.get(key) for key in ("text", "content", "output"))
    return total
