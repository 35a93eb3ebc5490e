"""The sandbox's deterministic replies: billing tests assert exact figures.

* ``W`` = number of whitespace-separated words across the prompt (each provider says which
  text counts), minimum 1.
* The reply is the first ``M`` words of :data:`REPLY_WORDS` (12 words), ``M = min(max_tokens,
  12)``; without a max-tokens parameter ``M = 12``. A reply cut short by max tokens is
  "truncated" (Anthropic ``max_tokens`` / OpenAI ``length``).
* Streams send exactly one text delta per output word; the deltas concatenate to the
  non-streaming text.
* ``C`` = cached prompt words: ``W // 2`` with the ``cached`` behaviour, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .behaviour import Behaviour
from .wire import dumps

__all__ = [
    "DELTA_TEXT",
    "MAX_OUTPUT",
    "REPLY_TEXT",
    "REPLY_WORDS",
    "TEXT_JSON",
    "Reply",
    "count_words",
    "plan_reply",
    "reply_text",
]

REPLY_TEXT: Final = "Hello from the Niyra provider sandbox, a deterministic stand-in for real models."
REPLY_WORDS: Final[tuple[str, ...]] = tuple(REPLY_TEXT.split())
MAX_OUTPUT: Final = len(REPLY_WORDS)  # 12

# Deltas for token i (0-based): the word, with a leading space after the first.
DELTA_TEXT: Final = tuple(w if i == 0 else " " + w for i, w in enumerate(REPLY_WORDS))
# The non-streaming text of an n-token reply, JSON-encoded.
TEXT_JSON: Final = tuple(dumps(" ".join(REPLY_WORDS[:n])) for n in range(MAX_OUTPUT + 1))


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
