"""Settings for the test suite: production settings (DEBUG off) with test-only values.

PostgreSQL and Redis on 127.0.0.1 are used when they answer (CI makes sure they do);
otherwise SQLite and an in-memory broker, and tests that need the real servers are skipped
(or fail, with NIYRA_REQUIRE_SERVICES=1). `tests/conftest.py` reports which were chosen.
"""

from __future__ import annotations

import base64
import os
import socket

os.environ["NIYRA_READ_DOTENV"] = "0"  # a developer's .env must not leak into tests


def _postgres_url() -> str | None:
    url = "postgres://postgres@127.0.0.1:5432/niyra"
    try:
        import psycopg

        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2").close()
    except Exception:
        return None
    return url


def _redis_url() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                return None
    except OSError:
        return None
    return "redis://127.0.0.1:6379/15"


if "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = _postgres_url() or "sqlite:///:memory:"
if "REDIS_URL" not in os.environ and "CELERY_BROKER_URL" not in os.environ:
    _redis = _redis_url()
    if _redis:
        os.environ["REDIS_URL"] = _redis
    else:
        os.environ["CELERY_BROKER_URL"] = "memory://"

os.environ.setdefault("DEBUG", "False")
os.environ.setdefault("SECRET_KEY", "test-" + base64.b64encode(os.urandom(24)).decode())
# A fresh keyring per test run: nothing encrypted under it outlives the test database.
os.environ.setdefault("NIYRA_ENCRYPTION_KEYS", "test1:" + base64.b64encode(os.urandom(32)).decode())
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-platform-test-key")
os.environ.setdefault("OPENAI_API_KEY", "sk-proj-platform-test-key")
os.environ.setdefault("SECURE_SSL_REDIRECT", "False")

from niyra.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; tests only
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405
USING_POSTGRES = DATABASES["default"]["ENGINE"].endswith("postgresql")  # noqa: F405
USING_REDIS = bool(REDIS_URL)  # noqa: F405
if not USING_REDIS:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
