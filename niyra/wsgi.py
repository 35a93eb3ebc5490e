"""WSGI entry point (management tooling only; production serves ASGI)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "niyra.settings.production")

application = get_wsgi_application()
