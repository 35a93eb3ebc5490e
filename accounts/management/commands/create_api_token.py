"""`manage.py create_api_token EMAIL --name NAME`: issue an API token and print it once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from accounts.services import api_token_create
from core.errors import NiyraError


class Command(BaseCommand):
    help = "Create an API token for a user and print it (it is shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--name", default="cli")
        parser.add_argument(
            "--service", action="store_true", help="a service token (metering API); the user must be staff"
        )

    def handle(self, *args: Any, email: str, name: str, service: bool, **options: Any) -> None:
        user = User.objects.filter(email__iexact=email.strip()).first()
        if user is None:
            raise CommandError(f"no user with email {email!r}")
        try:
            issued = api_token_create(user=user, name=name, kind="service" if service else "user")
        except NiyraError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"Token {issued.token.name!r} for {user.email} (store it now, it won't be shown again):")
        self.stdout.write(issued.plaintext)
