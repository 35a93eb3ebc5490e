"""The metrics exporter (core.metrics): served where METRICS_LISTEN says; an address it can't
use is one clear ERROR line, and the process goes on serving its users."""

from __future__ import annotations

import logging
import socket

import httpx2
import pytest

from core.metrics import exporter_start
from tests.faults.services import free_port


def test_the_exporter_serves_this_process_figures() -> None:
    port = free_port()
    started = exporter_start(f"127.0.0.1:{port}")
    assert started is not None
    server, _ = started
    try:
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
    assert "niyra_http_requests_total" in text


@pytest.mark.parametrize("listen", ["no-port-here", "127.0.0.1:not-a-port", "127.0.0.1:99999"])
def test_a_malformed_address_is_one_error_line(listen: str, caplog: pytest.LogCaptureFixture) -> None:
    assert exporter_start(listen) is None
    (line,) = [r for r in caplog.records if r.name == "core.metrics" and r.levelno == logging.ERROR]
    assert repr(listen) in line.getMessage() and "METRICS_LISTEN" in line.getMessage()


def test_a_taken_port_is_one_error_line(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        assert exporter_start(listen) is None
    assert any("cannot serve" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
