"""``python -m sandbox``: run the provider sandbox in the foreground (local dev stack only).

A plain entry point rather than a ``manage.py`` command: the sandbox fakes the outside world,
so it needs neither Niyra's settings nor its system checks to start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from .runner import SandboxServer, is_loopback_host

__all__ = ["main", "serve"]

DESCRIPTION = (
    "Run the provider sandbox (fake Anthropic, OpenAI and OAuth 2 servers) on a loopback "
    "address. Never for production. Behaviour is chosen by the API key / client_id; OAuth "
    'client secrets are "secret-" + client_id.'
)


def serve(host: str = "127.0.0.1", port: int = 8765, out: TextIO | None = None) -> None:
    """Serve until SIGINT / SIGTERM; refuse (``SystemExit`` with the reason) what it cannot do."""
    stdout = out if out is not None else sys.stdout
    if not is_loopback_host(host):
        raise SystemExit(
            f"Refusing to bind the provider sandbox to {host!r}: it only listens on loopback "
            "addresses (127.0.0.1, ::1, localhost) and is never exposed or used in production."
        )
    if not 0 <= port <= 65535:
        raise SystemExit(f"Invalid port {port}.")

    def ready(server: SandboxServer) -> None:
        stdout.write(f"Provider sandbox listening on {server.url} (Ctrl-C to stop)\n")
        stdout.write(f"  Anthropic base URL: {server.anthropic_base_url}\n")
        stdout.write(f"  OpenAI base URL:    {server.openai_base_url}\n")
        stdout.write(f"  OAuth base URL:     {server.oauth_base_url}\n")
        stdout.flush()

    try:
        SandboxServer(host=host, port=port).serve_forever(on_ready=ready)
    except OSError as exc:
        raise SystemExit(f"Cannot start the provider sandbox on {host}:{port}: {exc}") from exc
    stdout.write("Provider sandbox stopped.\n")
    stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    args = parser.parse_args(argv)
    serve(args.host, args.port)
