"""Development settings (`make run`, manage.py's default): DEBUG on, defaults that just work.

Reads `.env` first (scripts/dev_env.py writes generated secrets there; variables already in the
environment win; NIYRA_READ_DOTENV=0 skips it). Without DATABASE_URL, the database is the
embedded PostgreSQL that `make run` starts in var/postgres (scripts/local_postgres.py); without
REDIS_URL, Celery uses its filesystem transport (settings.base). The platform provider keys only
ever reach the local provider sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import environ

# Log lines for a person at a terminal (production writes JSON: settings.base, LOG_FORMAT).
os.environ.setdefault("LOG_FORMAT", "text")

_DOTENV = Path(__file__).resolve().parents[2] / ".env"
# Before the shared settings read the environment, so .env feeds every setting.
if os.environ.get("NIYRA_READ_DOTENV", "1") != "0" and _DOTENV.is_file():
    environ.Env.read_env(str(_DOTENV), overwrite=False)

from niyra.settings.base import *  # noqa: E402,F403
from niyra.settings.base import STORAGES, VAR_DIR, database, env  # noqa: E402

DEBUG = True

# Obviously fake where a value must exist; an empty keyring is reported by the system check.
SECRET_KEY = env.str("SECRET_KEY", default="dev-insecure-not-for-production")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
NIYRA_ENCRYPTION_KEYS = env.str("NIYRA_ENCRYPTION_KEYS", default="")
DATABASES = {
    "default": database(
        env.str("DATABASE_URL", default=f"postgres://postgres@/niyra?host={quote(str(VAR_DIR / 'postgres'))}")
    )
}
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")

STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
SESSION_COOKIE_SECURE = False  # plain http://127.0.0.1
CSRF_COOKIE_SECURE = False

# With no integration configured, the local provider sandbox is the one integration ("sandbox",
# with its documented fake client secret).
if not env.list("OAUTH_INTEGRATION_NAMES", default=[]):
    _sandbox = f"http://127.0.0.1:{env.int('NIYRA_SANDBOX_PORT', default=8765)}/oauth"
    OAUTH_INTEGRATIONS = {
        "sandbox": {
            "label": "Provider sandbox",
            "client_id": "sandbox-app",
            "client_secret": "secret-sandbox-app",  # the sandbox's documented fake rule, not a secret
            "authorize_url": f"{_sandbox}/authorize",
            "token_url": f"{_sandbox}/token",
            "revoke_url": f"{_sandbox}/revoke",
            "scopes": ["profile", "email"],
        }
    }
