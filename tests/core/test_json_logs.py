"""Log lines as production writes them: one JSON object per line, through the settings' console
handler (its filters, then its formatter), with nothing secret in them."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator

import pytest
from django.test import RequestFactory

from core.logging import LogContext, log_context_set
from tests.log_lines import console_handler_into


@pytest.fixture
def console_lines() -> Iterator[io.StringIO]:
    """What the settings' console handler would print, written to a buffer."""
    buffer = io.StringIO()
    handler = console_handler_into(buffer)
    logger = logging.getLogger("tests.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_line_carries_the_context_ids_and_its_extra_fields(console_lines: io.StringIO) -> None:
    with log_context_set(LogContext(request_id="req-12345678", call_id="call-1", user_id=7)):
        logging.getLogger("tests.json").info("hello %s", "world", extra={"status": 200})

    (line,) = lines(console_lines)
    assert line["message"] == "hello world" and line["level"] == "INFO" and line["logger"] == "tests.json"
    assert (line["request_id"], line["call_id"], line["user_id"], line["status"]) == ("req-12345678", "call-1", 7, 200)
    assert str(line["time"]).endswith("+00:00")


def test_a_traceback_is_written_redacted(console_lines: io.StringIO) -> None:
    """python-json-logger formats `exc_info` itself: the line must carry the redacted text."""
    key = "sk-ant-api03-" + secrets.token_hex(20)
    try:
        raise ValueError(f"the provider refused {key}")
    except ValueError:
        logging.getLogger("tests.json").exception("failed with %s", key, extra={"note": f"Bearer {key}"})

    text = console_lines.getvalue()
    (line,) = lines(console_lines)
    assert key[14:] not in text
    assert "ValueError: the provider refused [redacted]" in str(line["exc_info"])
    assert line["message"] == "failed with [redacted]" and line["note"] == "Bearer [redacted]"


def test_djangos_request_line_names_the_request_without_its_query_string(
    console_lines: io.StringIO, rf: RequestFactory
) -> None:
    """django.request passes the request object: its repr carries the query (OAuth codes, a key
    pasted into a URL)."""
    key = "sk-ant-api03-" + secrets.token_hex(20)
    request = rf.get("/settings/byok/", {"code": "oauth-code-123456", "k": key})
    logging.getLogger("tests.json").warning("Not Found: %s", request.path, extra={"request": request, "n": 3})

    (line,) = lines(console_lines)
    assert line["request"] == "GET /settings/byok/" and line["n"] == 3
    assert "oauth-code" not in console_lines.getvalue() and key[14:] not in console_lines.getvalue()
