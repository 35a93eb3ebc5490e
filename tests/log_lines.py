"""Log lines as production writes them: a handler like the settings' console handler (its
filters, then its JSON formatter), writing to a buffer a test reads."""

from __future__ import annotations

import io
import logging


def console_handler_into(buffer: io.StringIO) -> logging.Handler:
    console = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(console.formatter)
    for log_filter in console.filters:
        handler.addFilter(log_filter)
    return handler
