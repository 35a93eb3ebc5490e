"""Defence in depth: redact anything shaped like a provider key or bearer token from log records.

The plan is that secrets never reach a log call at all; this filter only limits the damage
if one does. It is attached to every handler in settings.LOGGING (a filter on a handler sees the
records of every logger that propagates to it); a new handler must list it too.

It redacts the formatted message, the traceback (formatted here, so the handler's formatter uses
the redacted text), the stack info and any string passed in `extra`.
"""

from __future__ import annotations

import logging
import re

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
            if name not in _STANDARD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class QuietIdleTicksFilter(logging.Filter):
    """Drop Celery's routine INFO lines about beat's periodic ticks when they did nothing.

    Idle, beat sends the heartbeat and the hold sweeper every minute and the worker logs each one
    received and succeeded: six lines a minute that say nothing. For the ticks named here this
    drops beat's "Sending due task" and the worker's "received" lines, and the "succeeded" line
    when the task returned nothing or 0 (nothing done). What an operator needs stays: a tick that
    did work (holds expired, refreshes queued) still logs its success with the count, failures
    and retries are logged as before, and the tasks a tick queues (refreshes) are not ticks.
    Attached to the `celery.beat`, `celery.worker.strategy` and `celery.app.trace` loggers.
    """

    IDLE_RESULTS = frozenset({"None", "0"})

    def __init__(self, task_names: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        self.task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        args = record.args
        if isinstance(args, dict):  # the worker's "received" / "succeeded" lines
            if args.get("name") not in self.task_names:
                return True
            return "return_value" in args and str(args["return_value"]) not in self.IDLE_RESULTS
        if isinstance(args, tuple) and len(args) == 2 and "Sending due task" in str(record.msg):  # beat
            return args[1] not in self.task_names
        return True
