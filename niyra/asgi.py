"""ASGI entry point: gunicorn with uvicorn workers in production, uvicorn in development."""

import os
import sys

from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "niyra.settings")

try:
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
except ImproperlyConfigured as exc:  # a missing secret: one line for the operator, no traceback
    sys.exit(f"niyra: configuration error: {exc}")
