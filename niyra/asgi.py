"""ASGI entry point: gunicorn with uvicorn workers in production, uvicorn in development.

The gateway's paths (`/v1/`, `/anthropic/`, `/openai/`) are served by `routing.gateway`'s app in
front of Django; everything else by Django's own ASGI handler (docs/gateway.md).
"""

import os
import sys

from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "niyra.settings.production")

try:
    from django.core.asgi import get_asgi_application

    django_application = get_asgi_application()

    from routing.gateway.asgi import asgi_application

    application = asgi_application(django_application)

    from django.db import connection

    # Create the (unopened) connection pool object now: otherwise the first burst of dashboard
    # requests races to create it, their threads queueing on an import lock.
    connection.pool  # type: ignore[attr-defined]  # noqa: B018
except ImproperlyConfigured as exc:  # a missing secret: one line for the operator, no traceback
    sys.exit(f"niyra: configuration error: {exc}")
