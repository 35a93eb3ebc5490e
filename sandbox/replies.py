"""The sandbox's deterministic replies: billing tests assert exact figures.

* ``W`` = number of whitespace-separated words across the prompt (each provider says which
  text counts), minimum 1.
* The reply is the first ``M`` words of :data:`REPLY_WORDS` (12 words), ``M = min(max_tokens,
  12)``; without a max-tokens parameter ``M = 12``. A reply cut short by max tokens is
  "truncated" (Anthropic ``max_tokens`` / OpenAI ``length``).
* Streams send exactly one text delta per output word; the deltas concatenate to the
  non-streaming text.
* ``C`` = cached prompt words: ``W // 2`` with the ``cached`` behaviour, else 0.
* A tool call (generated, or sent back in the history) counts :data:`TOOL_CALL_TOKENS`; so does a
  structured (json_schema) output. A tool definition counts :func:`tool_tokens`.
* Anthropic extended thinking is :data:`THINKING_TEXT` (its words are output tokens); OpenAI
  reasoning models report :data:`REASONING_TOKENS` for their reasoning effort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .behaviour import Behaviour
from .wire import dumps

__all__ = [
    "DEFAULT_EFFORT",
    "DELTA_TEXT",
    "MAX_OUTPUT",
    "REASONING_TOKENS",
    "REPLY_TEXT",
    "REPLY_WORDS",
    "TEXT_JSON",
    "THINKING_TEXT",
    "THINKING_WORDS",
    "TOOL_CALL_TOKENS",
    "Reply",
    "count_words",
    "plan_reply",
    "reply_text",
    "reply_words",
    "tool_tokens",
]

REPLY_TEXT: Final = "Hello from the Niyra provider sandbox, a deterministic stand-in for real models."
REPLY_WORDS: Final[tuple[str, ...]] = tuple(REPLY_TEXT.split())
MAX_OUTPUT: Final = len(REPLY_WORDS)  # 12

# Deltas for token i (0-based): the word, with a leading space after the first.
DELTA_TEXT: Final = tuple(w if i == 0 else " " + w for i, w in enumerate(REPLY_WORDS))
# The non-streaming text of an n-token reply, JSON-encoded.
TEXT_JSON: Final = tuple(dumps(" ".join(REPLY_WORDS[:n])) for n in range(MAX_OUTPUT + 1))


TOOL_CALL_TOKENS: Final = 20
THINKING_TEXT: Final = "Let me think this through step by step before I answer."
THINKING_WORDS: Final[tuple[str, ...]] = tuple(THINKING_TEXT.split())  # 11
# Reasoning tokens per OpenAI reasoning effort; gpt-5* and o-series models default to "medium".
REASONING_TOKENS: Final = {"none": 0, "minimal": 0, "low": 8, "medium": 16, "high": 32, "xhigh": 64}
DEFAULT_EFFORT: Final = "medium"


def tool_tokens(tool: object) -> int:
    """Input tokens of one tool definition: its compact JSON (as sent), one token per 4 characters."""
    return max(1, len(dumps(tool)) // 4)


def reply_words(n: int) -> str:
    """The first ``n`` (at most 12) words of the canned reply."""
    return " ".join(REPLY_WORDS[:n])


def count_words(text: str) -> int:
    """Whitespace-separated words: the sandbox's token count."""
    return len(text.split())


def reply_text(output_tokens: int) -> str:
    """The canned reply for ``output_tokens`` output tokens (words), cycling if needed."""
    n = max(0, output_tokens)
    words = [REPLY_WORDS[i % MAX_OUTPUT] for i in range(n)]
    return " ".join(words)


@dataclass(frozen=True, slots=True)
class Reply:
    """The figures of one reply: prompt words W, output tokens M, cached words C."""

    prompt_words: int
    output_tokens: int
    truncated: bool
    cached: int


def plan_reply(prompt_words: int, max_tokens: int | None, behaviour: Behaviour) -> Reply:
    if max_tokens is None:
        out, truncated = MAX_OUTPUT, False
    else:
        out, truncated = min(max_tokens, MAX_OUTPUT), max_tokens < MAX_OUTPUT
    cached = prompt_words // 2 if behaviour.cached else 0
    return Reply(prompt_words, out, truncated, cached)
