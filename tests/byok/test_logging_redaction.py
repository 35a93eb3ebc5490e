"""core.logging.RedactSecretsFilter: the second line of defence for keys in log records."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from django.conf import settings

from core.logging import REDACTED, RedactSecretsFilter, redact

ANTHROPIC = "sk-ant-api03-Zx9_Yw8-Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa-AAAA"
OPENAI = "sk-proj-abcDEF123_ghiJKL456-mnoPQR789stuVWX0yzA"


@pytest.mark.parametrize(
    "text",
    [
        f"saving {ANTHROPIC} now",
        f"key={OPENAI}",
        "legacy sk-" + "a1B2" * 12,
        "sk-svcacct-" + "q" * 30,
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "authorization: bearer abcdefgh12345678",
        "x-api-key: 0123456789abcdefXYZ",
        "{'api_key': 'hunter2hunter2hunter2'}",
        "client_secret=very-secret-value-123",
        "token niy_a1b2c3d4_" + "Z" * 40,
    ],
)
def test_secret_shapes_are_redacted(text: str) -> None:
    redacted = redact(text)
    assert REDACTED in redacted
    for secret in (ANTHROPIC, OPENAI, "eyJhbGciOiJIUzI1NiJ9", "abcdefgh12345678", "0123456789abcdef", "hunter2"):
        assert secret not in redacted


@pytest.mark.parametrize(
    "text",
    ["task-1234567890 finished", "disk-usage-report-2026", "ask- questions", "provider anthropic outcome=ok"],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(where)s"))
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def test_messages_args_tracebacks_stack_and_extra_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("key %s for %s", ANTHROPIC, "ada", extra={"where": f"extra={OPENAI}"})
    try:
        raise RuntimeError(f"provider said no to {OPENAI}")
    except RuntimeError:
        logger.exception("call failed", extra={"where": "-"})
    logger.warning("look", stack_info=True, extra={"where": ANTHROPIC})
    output = stream.getvalue()
    assert ANTHROPIC not in output and OPENAI not in output
    assert "key [redacted] for ada" in output
    assert "RuntimeError: provider said no to [redacted]" in output


def test_a_broken_format_string_still_logs(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.error("broken %s %s " + ANTHROPIC, "only-one", extra={"where": "-"})
    assert "broken" in stream.getvalue() and ANTHROPIC not in stream.getvalue()


def test_every_configured_handler_uses_the_filter() -> None:
    for name, handler in settings.LOGGING["handlers"].items():
        assert "redact_secrets" in handler.get("filters", []), name
