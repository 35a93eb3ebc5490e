"""Provider-neutral shapes of a chat call, its stream and its usage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    vendor_model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    system: str | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them. `input_tokens` includes cached tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    stop_reason: str  # "stop" | "length" | "other"
    usage: Usage
    provider_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    """The latest usage the provider has told us (cumulative, not an increment)."""

    usage: Usage


@dataclass(frozen=True, slots=True)
class StreamEnd:
    stop_reason: str


StreamEvent = TextDelta | UsageUpdate | StreamEnd


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: list[list[float]] = field(default_factory=list)
    input_tokens: int = 0
