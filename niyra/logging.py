"""Defence in depth: redact anything shaped like a provider key or bearer token from log records.

The plan is that secrets never reach a log call at all; this filter only limits the damage
if one does.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

SECRET_PATTERNS = re.compile(
    r"""
    sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{8,}      # Anthropic / OpenAI API keys
    | niy_[A-Za-z0-9]{6,}_[A-Za-z0-9_\-]{10,} # Niyra API tokens
    | (?<=Bearer\ )[A-Za-z0-9._~+/\-]{8,}=*   # any bearer credential
    """,
    re.VERBOSE,
)


def redact(text: str) -> str:
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
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
