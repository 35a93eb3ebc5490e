"""The sandbox's request log: what each API and OAuth request asked for, and how it was answered.

Keys and tokens are only stored as ``sha256(value)[:16]`` (:func:`key_id`); plaintext secrets
are never logged. API records also keep the request ``body`` as received (so tests can see that
a gateway forwarded a field untouched) and the provider headers of :data:`LOGGED_HEADERS`; only
the newest :data:`BODY_MAXLEN` records keep them, so a long benchmark does not hold every body.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections import deque
from typing import Any, Final

__all__ = ["BODY_MAXLEN", "LOGGED_HEADERS", "LOG_FIELDS", "LogRecord", "RequestLog", "key_id"]


def key_id(secret: str) -> str:
    """Log-safe identifier of a key or token: ``sha256(secret)[:16]``."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:16]


LOG_FIELDS: Final = (
    "api",
    "path",
    "method",
    "key_id",
    "model",
    "stream",
    "grant_type",
    "client_id",
    "refresh_token_id",
    "status",
    "at",
    "body",
    "headers",
)
BODY_MAXLEN: Final = 1_000
# Request headers a gateway must pass on; never a credential.
LOGGED_HEADERS: Final = (
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "idempotency-key",
    "openai-organization",
    "openai-project",
)


class LogRecord:
    """One request. ``status`` is ``None`` while the request is pending (or never answered)."""

    __slots__ = LOG_FIELDS

    def __init__(
        self,
        api: str,
        path: str,
        method: str,
        key_id: str | None = None,
        model: str | None = None,
        stream: bool | None = None,
        grant_type: str | None = None,
        client_id: str | None = None,
        refresh_token_id: str | None = None,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.api = api
        self.path = path
        self.method = method
        self.key_id = key_id
        self.model = model
        self.stream = stream
        self.grant_type = grant_type
        self.client_id = client_id
        self.refresh_token_id = refresh_token_id
        self.status: int | None = None
        self.at = time.time()
        self.body = body
        self.headers = headers

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LOG_FIELDS}


class RequestLog:
    """Thread-safe, bounded log of requests; never holds plaintext keys or tokens.

    Records are dicts with keys ``api`` ("anthropic" | "openai" | "oauth"), ``path``,
    ``method``, ``key_id`` (sha256(key)[:16] or None), ``model``, ``stream``, ``grant_type``,
    ``client_id``, ``refresh_token_id`` (sha256(refresh token)[:16] or None), ``status`` (None
    while pending / for requests that were never answered), ``at`` (epoch seconds), ``body``
    (the parsed JSON body as received; for a multipart upload its form fields, each file
    replaced by ``{"filename", "size", "content_type"}``; None for OAuth, GET and non-JSON
    requests, and once the record is older than the newest :data:`BODY_MAXLEN`) and ``headers``
    (the :data:`LOGGED_HEADERS` the request carried, lower-case names; None for OAuth).
    """

    def __init__(self, maxlen: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._records: deque[LogRecord] = deque(maxlen=maxlen)
        self._with_body: deque[LogRecord] = deque()

    def add(self, record: LogRecord) -> LogRecord:
        with self._lock:
            self._records.append(record)
            if record.body is not None:
                self._with_body.append(record)
                if len(self._with_body) > BODY_MAXLEN:
                    self._with_body.popleft().body = None
        return record

    def records(self, *, deep: bool = True) -> list[dict[str, Any]]:
        """All records, oldest first; ``deep`` copies the bodies too, so callers may change them."""
        with self._lock:
            snapshot = list(self._records)
        if deep:
            return [copy.deepcopy(r.as_dict()) for r in snapshot]
        return [r.as_dict() for r in snapshot]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._with_body.clear()

    def __len__(self) -> int:
        return len(self._records)

    def _snapshot(self) -> list[LogRecord]:
        with self._lock:
            return list(self._records)

    def count(
        self,
        key: str | None = None,
        api: str | None = None,
        path: str | None = None,
        status: int | None = None,
    ) -> int:
        """Number of records matching all given filters.

        ``key`` is the plaintext key (hashed for the lookup); ``path`` matches the full path or
        a suffix of it (``"/v1/messages"`` matches ``"/anthropic/v1/messages"``).
        """
        kid = key_id(key) if key is not None else None
        n = 0
        for r in self._snapshot():
            if kid is not None and r.key_id != kid:
                continue
            if api is not None and r.api != api:
                continue
            if path is not None and not (r.path == path or r.path.endswith(path)):
                continue
            if status is not None and r.status != status:
                continue
            n += 1
        return n

    def count_refresh(self, refresh_token: str) -> int:
        """How many token requests presented this refresh token."""
        rid = key_id(refresh_token)
        return sum(1 for r in self._snapshot() if r.refresh_token_id == rid)
