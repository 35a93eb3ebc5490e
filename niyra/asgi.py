"""ASGI entry point: gunicorn with uvicorn workers in production, uvicorn in development."""

import os
import sys

from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "niyra.settings.production")

try:
    from niyra.handlers import get_asgi_application

    application = get_asgi_application()

    from django.db import connection

    # Create the (unopened) connection pool object now: otherwise the first burst of requests
    # races to create it, hundreds of threads queueing on an import lock.
    connection.pool  # type: ignore[attr-defined]  # noqa: B018
except ImproperlyConfigured as exc:  # a missing secret: one line for the operator, no traceback
    sys.exit(f"niyra: configuration error: {exc}")
