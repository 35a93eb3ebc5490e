"""``manage.py sandbox``: run the provider sandbox in the foreground (local dev stack only)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.sandbox.runner import SandboxServer, is_loopback_host


class Command(BaseCommand):
    help = (
        "Run the provider sandbox (fake Anthropic, OpenAI and OAuth 2 servers) on a loopback "
        "address. Never for production. Behaviour is chosen by the API key / client_id; OAuth "
        'client secrets are "secret-" + client_id.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
        parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")

    def handle(self, *args: Any, **options: Any) -> None:
        host: str = options["host"]
        port: int = options["port"]
        if not is_loopback_host(host):
            raise CommandError(
                f"Refusing to bind the provider sandbox to {host!r}: it only listens on loopback "
                "addresses (127.0.0.1, ::1, localhost) and is never exposed or used in production."
            )
        if not 0 <= port <= 65535:
            raise CommandError(f"Invalid port {port}.")

        def ready(server: SandboxServer) -> None:
            self.stdout.write(f"Provider sandbox listening on {server.url} (Ctrl-C to stop)")
            self.stdout.write(f"  Anthropic base URL: {server.anthropic_base_url}")
            self.stdout.write(f"  OpenAI base URL:    {server.openai_base_url}")
            self.stdout.write(f"  OAuth base URL:     {server.oauth_base_url}")
            self.stdout.flush()

        try:
            SandboxServer(host=host, port=port).serve_forever(on_ready=ready)
        except OSError as exc:
            raise CommandError(f"Cannot start the provider sandbox on {host}:{port}: {exc}") from exc
        self.stdout.write("Provider sandbox stopped.")
