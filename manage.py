#!/usr/bin/env python
"""Django's command-line utility for Niyra."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "niyra.settings.development")
    from django.core.exceptions import ImproperlyConfigured

    try:
        from django.conf import settings

        settings.INSTALLED_APPS  # noqa: B018 - force settings to load so a bad environment fails here
    except ImproperlyConfigured as exc:
        # A missing secret or a malformed DATABASE_URL is an operator mistake: one line, no traceback.
        sys.exit(f"niyra: configuration error: {exc}")

    from django.core.management import execute_from_command_line
    from django.db.utils import OperationalError

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        sys.exit(f"niyra: configuration error: {exc}")
    except OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        sys.exit(f"niyra: cannot use the database ({first_line}); check DATABASE_URL")


if __name__ == "__main__":
    main()
