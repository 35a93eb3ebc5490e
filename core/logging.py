"""Defence in depth: redact anything shaped like a provider key or bearer token from log records.

The plan is that secrets never reach a log call at all; this filter only limits the damage
if one does. It is attached to every handler in settings.LOGGING (a filter on a handler sees the
records of every logger that propagates to it); a new handler must list it too.

It redacts the formatted message, the traceback (formatted here, so the handler's formatter uses
the redacted text), the stack info and any string passed in `extra`, inside a dict or a list too
(Celery's failure line passes its exception and traceback in a `data` dict).
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

REDACTED = "[redacted]"

_KEY_CHARS = r"A-Za-z0-9_\-"
SECRET_PATTERNS = re.compile(
    rf"""
    (?<![A-Za-z0-9])sk-(?:ant-|proj-|svcacct-|admin-)?[{_KEY_CHARS}]{{8,}}   # Anthropic / OpenAI keys
    | (?<![A-Za-z0-9])niy_[A-Za-z0-9]{{6,}}_[{_KEY_CHARS}]{{10,}}             # Niyra API tokens
    """,
    re.VERBOSE,
)
# A credential after a label: "Bearer <token>", "x-api-key: <key>", "api_key='<key>'", ...
LABELLED_SECRET = re.compile(
    r"""
    (?P<label>
        \bbearer\s+
      | \b(?:x-api-key|api[_-]?key|authorization|access[_-]?token|refresh[_-]?token|client[_-]?secret|password)
        ["']?\s*[:=]\s*["']?
    )
    (?P<secret>[A-Za-z0-9._~+/\-]{8,}=*)
    """,
    re.VERBOSE | re.IGNORECASE,
)

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_formatter = logging.Formatter()


def redact(text: str) -> str:
    text = LABELLED_SECRET.sub(lambda m: m.group("label") + REDACTED, text)
    return SECRET_PATTERNS.sub(REDACTED, text)


def _redacted(value: Any) -> Any:
    """`value` with every string redacted, in dicts and lists too (copies: the logging caller's
    objects are left as they were)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = str(record.msg)
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Format the traceback now so the handler's formatter reuses the redacted text.
            record.exc_text = _formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRIBUTES and isinstance(value, str | dict | list | tuple):
                setattr(record, name, _redacted(value))
        return True


def _json_value(value: object) -> str:
    """How a JSON line writes an `extra` that isn't JSON (the redaction filter leaves objects
    alone: other handlers may need them): django.request's request without its query string
    (its repr has it), anything else as its redacted text."""
    if isinstance(value, HttpRequest):
        return f"{value.method} {value.path}"
    return redact(str(value))


class JsonFormatter(_JsonFormatter):
    """python-json-logger's formatter (one JSON object per line), writing a record's traceback
    from `exc_text` when it has one, as logging.Formatter does: that is the text the redaction
    filter redacted (python-json-logger would format `exc_info` afresh)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("json_default", _json_value)
        super().__init__(*args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_text:
            return super().format(record)
        exc_info, record.exc_info = record.exc_info, None
        try:
            return super().format(record)
        finally:
            record.exc_info = exc_info


# --- Correlation: the request (or task) a log line belongs to -------------------------------

# What an incoming request id may be (X-Request-Id, Fly-Request-Id): anything else is replaced,
# so a client can't write into our logs.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")


def request_id_new() -> str:
    return secrets.token_hex(16)


def request_id_checked(value: str | None) -> str | None:
    """`value` if it is a well-formed request id, else None."""
    return value if value is not None and REQUEST_ID.fullmatch(value) else None


@dataclass(slots=True)
class LogContext:
    """The request or task being served. Mutable: a routed call's id is set once the gateway has
    one, and the request's log line and every record logged after it carry it."""

    request_id: str
    call_id: str | None = None
    task_id: str | None = None
    task_name: str | None = None
    user_id: int | None = None


_log_context: ContextVar[LogContext | None] = ContextVar("niyra_log_context", default=None)


def log_context() -> LogContext | None:
    return _log_context.get()


@contextlib.contextmanager
def log_context_set(context: LogContext) -> Iterator[LogContext]:
    token = _log_context.set(context)
    try:
        yield context
    finally:
        _log_context.reset(token)


class LogContextFilter(logging.Filter):
    """Puts the request id, routed call id and task of the current context on every record (the
    JSON formatter writes them out). Attached to every handler, like the redaction filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _log_context.get()
        if context is not None:
            for name in ("request_id", "call_id", "task_id", "task_name", "user_id"):
                value = getattr(context, name)
                if value is not None and not hasattr(record, name):
                    setattr(record, name, value)
        return True


class QuietIdleTicksFilter(logging.Filter):
    """Drop Celery's routine INFO lines about beat's periodic ticks when they did nothing.

    Idle, beat sends the heartbeat and the hold sweeper every minute and the worker logs each one
    received and succeeded: six lines a minute that say nothing. For the ticks named here this
    drops beat's "Sending due task" and the worker's "received" lines, and the "succeeded" line
    when the task returned nothing or 0 (nothing done). What an operator needs stays: a tick that
    did work (holds expired, refreshes queued) still logs its success with the count, failures
    and retries are logged as before, and the tasks a tick queues (refreshes) are not ticks.
    Attached to the `celery.beat` and `celery.worker.strategy` loggers, and to `niyra.tasks`,
    whose line per task run (core.task_observability) replaced Celery's "succeeded" line and
    passes the same arguments.
    """

    IDLE_RESULTS = frozenset({"None", "0"})

    def __init__(self, task_names: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        self.task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        args = record.args
        if isinstance(args, dict):  # the worker's "received" line, a task run's line
            if args.get("name") not in self.task_names:
                return True
            return "return_value" in args and str(args["return_value"]) not in self.IDLE_RESULTS
        if isinstance(args, tuple) and len(args) == 2 and "Sending due task" in str(record.msg):  # beat
            return args[1] not in self.task_names
        return True
