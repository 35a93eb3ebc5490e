"""Settings for the test suite: the production settings (DEBUG off) with test-only values.

The database is DATABASE_URL: CI's system PostgreSQL, or the embedded one that the
`tests.local_postgres` plugin starts when DATABASE_URL is not set. Redis on 127.0.0.1 is used
when it answers; otherwise an in-memory broker and cache, and tests marked `redis` are skipped
(or fail, with NIYRA_REQUIRE_SERVICES=1). `tests/conftest.py` reports which was chosen.
"""

from __future__ import annotations

import base64
import os
import socket


def _redis_url() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                return None
    except OSError:
        return None
    return "redis://127.0.0.1:6379/15"


if "REDIS_URL" not in os.environ and "CELERY_BROKER_URL" not in os.environ:
    _redis = _redis_url()
    if _redis:
        os.environ["REDIS_URL"] = _redis
    else:
        os.environ["CELERY_BROKER_URL"] = "memory://"

os.environ.setdefault("SECRET_KEY", "test-" + base64.b64encode(os.urandom(24)).decode())
# A fresh keyring per test run: nothing encrypted under it outlives the test database.
os.environ.setdefault("NIYRA_ENCRYPTION_KEYS", "test1:" + base64.b64encode(os.urandom(32)).decode())
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-platform-test-key")
os.environ.setdefault("OPENAI_API_KEY", "sk-proj-platform-test-key")
os.environ.setdefault("SECURE_SSL_REDIRECT", "False")
os.environ.setdefault("EMAIL_URL", "memorymail://")
os.environ.setdefault("NIYRA_PUBLIC_URL", "http://testserver")
os.environ["SENTRY_DSN"] = ""  # a test run never reports (tests/core/test_sentry.py captures its own)

from niyra.settings.production import *  # noqa: E402,F403
from niyra.settings.production import REDIS_URL, STORAGES  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; tests only
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
USING_REDIS = bool(REDIS_URL)
if not USING_REDIS:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
