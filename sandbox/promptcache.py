"""The sandbox's prompt cache: which prompt prefixes it has seen, so a repeated prefix is
reported as read from the cache and a new one as written to it.

A prefix is identified by a sha256 over the key, the model and the prompt's parts in order
(:class:`PrefixHasher`); the cache only remembers the digests. It is cleared with the request log
(``/_sandbox/reset``) and forgets everything when it reaches :data:`MAX_PREFIXES`.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Final

from .wire import dumps

__all__ = ["MAX_PREFIXES", "PrefixHasher", "PromptCache"]

MAX_PREFIXES: Final = 100_000


class PrefixHasher:
    """Running hash of a prompt's parts; :meth:`digest` identifies the prefix fed so far."""

    def __init__(self, *scope: str | None) -> None:
        self._hash = hashlib.sha256("\x00".join(s or "" for s in scope).encode("utf-8", "surrogatepass"))

    def feed(self, part: Any) -> None:
        self._hash.update(dumps(part).encode("utf-8", "surrogatepass"))
        self._hash.update(b"\x1e")

    def digest(self) -> bytes:
        return self._hash.copy().digest()


class PromptCache:
    """Thread-safe set of seen prefix digests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()

    def seen(self, digest: bytes) -> bool:
        with self._lock:
            return digest in self._seen

    def remember(self, digests: list[bytes]) -> None:
        with self._lock:
            if len(self._seen) + len(digests) > MAX_PREFIXES:
                self._seen.clear()
            self._seen.update(digests)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
