"""Production settings (Fly.io): DEBUG off, every secret from the environment, none defaulted.

Never reads `.env`. A missing secret stops start-up with one line naming every missing one.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from core.sentry import sentry_init
from niyra.settings.base import *  # noqa: F403
from niyra.settings.base import SENTRY_DSN, SENTRY_ENVIRONMENT, SENTRY_TRACES_SAMPLE_RATE, database, env

if env.bool("DEBUG", default=False):
    raise ImproperlyConfigured("DEBUG is on, but production settings never run with DEBUG: unset it")
_REQUIRED = (
    "SECRET_KEY",
    "NIYRA_ENCRYPTION_KEYS",
    "DATABASE_URL",
    "REDIS_URL|CELERY_BROKER_URL",
    "ALLOWED_HOSTS",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "EMAIL_URL",
    "NIYRA_PUBLIC_URL",
)
_missing = [
    names.replace("|", " or ") for names in _REQUIRED if not any(env.str(name, default="") for name in names.split("|"))
]
if _missing:
    raise ImproperlyConfigured("missing required environment variables (production settings): " + ", ".join(_missing))

SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
NIYRA_ENCRYPTION_KEYS = env.str("NIYRA_ENCRYPTION_KEYS")
DATABASES = {"default": database(env.str("DATABASE_URL"))}
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY")
OPENAI_API_KEY = env.str("OPENAI_API_KEY")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # Fly's checks speak plain HTTP
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True

# Error reports (core.sentry; off without SENTRY_DSN). Started here, as Sentry's Django guide does,
# because every deployed process loads these settings once, before Django is set up: each gunicorn
# worker (no preload: it imports the app after the fork), the Celery worker (its pool's children
# inherit the client, whose sending thread restarts in each) and beat, and `manage.py` (the
# release's migrate). Development and the tests never report. The release is the deployed image.
sentry_init(
    dsn=SENTRY_DSN,
    environment=SENTRY_ENVIRONMENT,
    release=env.str("FLY_IMAGE_REF", default="") or None,
    traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
)
