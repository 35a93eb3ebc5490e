"""Settings every environment shares; `development`, `test` and `production` build on them.

Everything comes from the environment (12-factor, django-environ). This module reads no secret
and holds no development default: each environment module sets the secrets, the database and
what DEBUG changes (production: mandatory, no defaults; development: defaults that just work).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import csp.constants as csp
import environ
from django.core.exceptions import ImproperlyConfigured
from pythonjsonlogger.core import RESERVED_ATTRS

BASE_DIR = Path(__file__).resolve().parents[2]
VAR_DIR = BASE_DIR / "var"  # ignored by git: embedded PostgreSQL data, Celery filesystem queue, beat state

env = environ.Env()

DEBUG = False

# SECRET_KEY, ALLOWED_HOSTS, NIYRA_ENCRYPTION_KEYS (parsed and checked by the keyring's system
# check and /readyz, never stored in the database), DATABASES and the platform provider keys
# are set by each environment module.
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "core.errors.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    # Niyra, from the base up (docs/architecture.md): each app imports only apps listed before it.
    "core",
    "accounts",
    "notifications",
    "credits",
    "byok",
    "connections",
    "routing",
    "dashboard",
    "support",
]

# Every middleware here is async-capable: the routing endpoints are async views, and a sync
# middleware would cost a thread hop per request.
MIDDLEWARE = [
    "core.middleware.HealthCheckMiddleware",
    "core.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.ContentSecurityPolicyMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "niyra.urls"
WSGI_APPLICATION = "niyra.wsgi.application"
ASGI_APPLICATION = "niyra.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "notifications.context_processors.notifications_unread",
                "credits.context_processors.low_balance",  # the low-balance banner (base.html)
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
VAR_DIR.mkdir(exist_ok=True)
# A pool that can't reach PostgreSQL tries again with a growing backoff (1 s, 2 s, 4 s, ...);
# giving an attempt up after this long lets the next request start over at once, so a pool is
# back within seconds of the server, however long it was down. Both pools (the gateway's too).
DB_POOL_RECONNECT_TIMEOUT_SECONDS = env.float("DB_POOL_RECONNECT_TIMEOUT_SECONDS", default=10.0)
# Under ASGI every request runs its ORM work in a fresh thread, so without a pool each request
# would open a new PostgreSQL connection (~3 ms). psycopg's pool hands one over warm.
DB_POOL = (
    {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=20),
        # A request that can't get a connection this fast (PostgreSQL down, restarting or
        # failing over) is answered 503 database_unavailable, rather than queueing behind it.
        "timeout": env.float("DB_POOL_TIMEOUT_SECONDS", default=5.0),
        "reconnect_timeout": DB_POOL_RECONNECT_TIMEOUT_SECONDS,
    }
    if env.bool("DB_POOL", default=True)
    else None
)


def database(url: str) -> dict[str, Any]:
    """DATABASES["default"] for DATABASE_URL. Niyra runs on PostgreSQL only, in every environment."""
    config: dict[str, Any] = env.db_url_config(url)
    if config.get("ENGINE") != "django.db.backends.postgresql":
        raise ImproperlyConfigured("DATABASE_URL must be a postgres:// URL (Niyra runs on PostgreSQL only)")
    options = config.setdefault("OPTIONS", {})
    if not config.get("HOST") and "host" in options:
        # A Unix-socket URL (`postgres://user@/db?host=/dir`, the embedded server's) leaves the
        # directory in OPTIONS; HOST is where Django and anything reading settings look for it.
        config["HOST"] = options.pop("host")
    # libpq waits forever by default for a server that doesn't answer (a failover's old address).
    options.setdefault("connect_timeout", env.int("DB_CONNECT_TIMEOUT_SECONDS", default=5))
    config["ATOMIC_REQUESTS"] = False
    config.setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
    if DB_POOL is not None:
        config["CONN_MAX_AGE"] = 0
        options["pool"] = dict(DB_POOL)
    return config


DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The gateway's own async pool, per worker process (routing/gateway/db.py), beside Django's.
GATEWAY_DB_POOL_MIN = env.int("GATEWAY_DB_POOL_MIN", default=2)
GATEWAY_DB_POOL_MAX = env.int("GATEWAY_DB_POOL_MAX", default=20)
# A call that can't get a connection this fast fails, rather than queueing behind the database.
GATEWAY_DB_POOL_TIMEOUT_SECONDS = env.float("GATEWAY_DB_POOL_TIMEOUT_SECONDS", default=5.0)
# psycopg prepares a statement server-side after this many runs on a connection, so the
# ledger's statements are planned once per connection, not once per call.
GATEWAY_DB_PREPARE_THRESHOLD: int | None = env.int("GATEWAY_DB_PREPARE_THRESHOLD", default=5)
# Token -> caller -> routing snapshot, cached per process and dropped when PostgreSQL says the
# user's routing facts changed (routing/gateway/cache.py); the TTL is only a backstop.
GATEWAY_CALLER_CACHE_SECONDS = env.float("GATEWAY_CALLER_CACHE_SECONDS", default=300.0)
GATEWAY_CALLER_CACHE_SIZE = env.int("GATEWAY_CALLER_CACHE_SIZE", default=10_000)

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed, compressed names: collectstatic writes the manifest (the Docker build runs it).
        "BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- Celery (the CELERY_ namespace is read by niyra/celery.py) --------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
CELERY_FILESYSTEM_DIR = VAR_DIR / "celery"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Zero-setup default for `make run`: queue messages are files in an ignored folder.
    (CELERY_FILESYSTEM_DIR / "queue").mkdir(parents=True, exist_ok=True)
    (CELERY_FILESYSTEM_DIR / "processed").mkdir(parents=True, exist_ok=True)
    (CELERY_FILESYSTEM_DIR / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_FILESYSTEM_DIR / "queue"),
        "data_folder_out": str(CELERY_FILESYSTEM_DIR / "queue"),
        "processed_folder": str(CELERY_FILESYSTEM_DIR / "processed"),
        "control_folder": str(CELERY_FILESYSTEM_DIR / "control"),
        "store_processed": False,
    }
else:
    # Socket timeouts: a Redis that accepts connections but never answers (frozen, partitioned)
    # must fail a publish in seconds, not hang the request that enqueues.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600, "socket_timeout": 5, "socket_connect_timeout": 5}
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-task gets its task redelivered
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=120)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=90)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# The worker and beat log through LOGGING below (JSON, redaction, the request id of the task's
# LogContext) instead of Celery replacing the root logger's handlers with its own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Deploys: a worker stopped by SIGTERM, SIGKILLed after fly.toml's kill_timeout ---------------
# With REMAP_SIGTERM=SIGQUIT in the worker's environment (fly.toml [env]; Celery reads it before
# any setting), SIGTERM starts Celery's soft shutdown: running tasks get this long to finish, then
# the rest are cancelled and, acks_late, handed back to the queue at once for the next worker,
# rather than after the broker's visibility timeout (an hour). Keep it under kill_timeout, with
# room for the cancel and the requeue.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env.float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", default=20.0)

# --- Deploys: beat's schedule in Redis, one beat at a time -------------------------------------
# A deploy replaces the beat machine and its disk. Celery's default scheduler keeps each entry's
# last run in a local file: a new machine would start every entry over (a tick due just after the
# restart waits a whole interval), and a new beat overlapping the old one would double ticks.
# RedBeat keeps the last runs in Redis and holds a lock there: a restarted beat carries on where
# the last one stopped, and a second beat waits for the lock. Without Redis (the quick start's
# filesystem broker) there is one local beat, and the default scheduler's file in var/ is kept.
# Beat wakes at least this often; a beat waiting for the lock tries again as often.
CELERY_BEAT_MAX_LOOP_INTERVAL = env.int("CELERY_BEAT_MAX_LOOP_INTERVAL", default=5)
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BEAT_SCHEDULER = "redbeat.RedBeatScheduler"
    # RedBeat reads its settings under its own names: under CELERY_ it would find their values
    # but take them for unset (a warning at start, and its Redis options not passed on).
    REDBEAT_REDIS_URL = CELERY_BROKER_URL
    REDBEAT_REDIS_OPTIONS = {"socket_timeout": 5, "socket_connect_timeout": 5}
    # A beat that died without letting go (SIGKILL, a lost machine) holds the lock this long.
    REDBEAT_LOCK_TIMEOUT = 6 * CELERY_BEAT_MAX_LOOP_INTERVAL

# A cache every process shares (worker heartbeat, throttles): Redis when there is one, else files.
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # A frozen Redis fails a cache read in seconds (throttles then let requests through).
            "OPTIONS": {"socket_timeout": 3, "socket_connect_timeout": 3},
        }
        if REDIS_URL
        else {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    )
}

# --- Worker liveness (core.liveness): a worker that stops consuming exits, to be restarted -----
# Each worker pings itself through its own queue every interval; no ping run for the timeout ends
# it with status 1. The timeout outlasts a ping queued behind tasks that run to the hard time
# limit. 0 turns it off. WORKER_LIVENESS_LISTEN ("0.0.0.0:8081") serves GET /livez for a check.
CELERY_WORKER_DIRECT = True  # each worker also consumes a queue of its own: the pings
WORKER_LIVENESS_INTERVAL_SECONDS = env.float("WORKER_LIVENESS_INTERVAL_SECONDS", default=30.0)
WORKER_LIVENESS_TIMEOUT_SECONDS = env.float("WORKER_LIVENESS_TIMEOUT_SECONDS", default=180.0)
WORKER_LIVENESS_LISTEN = env.str("WORKER_LIVENESS_LISTEN", default="")

# --- Providers (platform keys, set per environment, pay for hosted calls; base URLs point at
# the sandbox in development) ------------------------------------------------------------------
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="") or None
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="") or None
PROVIDER_TIMEOUT_SECONDS = env.float("PROVIDER_TIMEOUT_SECONDS", default=60.0)
PROVIDER_VALIDATION_TIMEOUT_SECONDS = env.float("PROVIDER_VALIDATION_TIMEOUT_SECONDS", default=10.0)

# --- BYOK key health (byok.tasks.key_health_tick) -------------------------------------------
# Each saved key is probed once per interval, spread over it; a tick every BYOK_HEALTH_TICK_SECONDS
# queues at most BYOK_HEALTH_MAX_PER_PROVIDER_PER_TICK probes per provider, evenly across the tick.
BYOK_HEALTH_INTERVAL_SECONDS = env.int("BYOK_HEALTH_INTERVAL_SECONDS", default=86400)
BYOK_HEALTH_TICK_SECONDS = env.int("BYOK_HEALTH_TICK_SECONDS", default=300)
BYOK_HEALTH_MAX_PER_PROVIDER_PER_TICK = env.int("BYOK_HEALTH_MAX_PER_PROVIDER_PER_TICK", default=30)
# How long a 429 without Retry-After marks a key "rate limited".
BYOK_RATE_LIMITED_DEFAULT_SECONDS = env.int("BYOK_RATE_LIMITED_DEFAULT_SECONDS", default=60)

# --- OAuth refresh daemon ------------------------------------------------------------------
OAUTH_REFRESH_INTERVAL_SECONDS = env.int("OAUTH_REFRESH_INTERVAL_SECONDS", default=300)
OAUTH_REFRESH_MARGIN_SECONDS = max(60, env.int("OAUTH_REFRESH_MARGIN_SECONDS", default=120))


# OAuth integrations (connections.oauth): OAUTH_INTEGRATION_NAMES=gmail,slack, then per name (upper-case,
# "-" -> "_") OAUTH_<NAME>_CLIENT_ID, _CLIENT_SECRET, _AUTHORIZE_URL, _TOKEN_URL (required) and
# _REVOKE_URL, _SCOPES (space/comma separated), _LABEL, _REDIRECT_URI, _DEFAULT_EXPIRES_IN,
# _TIMEOUT_SECONDS, _CLIENT_AUTH_METHOD (client_secret_basic | client_secret_post) (optional).
# A configured name with a required value missing stops start-up. Development adds the local
# provider sandbox when no name is configured.
def _oauth_integrations() -> dict[str, dict[str, object]]:
    names = env.list("OAUTH_INTEGRATION_NAMES", default=[])
    integrations: dict[str, dict[str, object]] = {}
    missing: list[str] = []
    for name in names:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
            raise ImproperlyConfigured(f"OAUTH_INTEGRATION_NAMES: {name!r} is not a lower-case slug (max 32)")
        prefix = "OAUTH_" + name.upper().replace("-", "_") + "_"
        entry: dict[str, object] = {}
        for field in ("client_id", "client_secret", "authorize_url", "token_url"):
            entry[field] = env.str(prefix + field.upper(), default="")
            if not entry[field]:
                missing.append(prefix + field.upper())
        for field in ("revoke_url", "label", "redirect_uri", "client_auth_method"):
            entry[field] = env.str(prefix + field.upper(), default="")
        entry["scopes"] = env.str(prefix + "SCOPES", default="").replace(",", " ").split()
        entry["default_expires_in"] = env.int(prefix + "DEFAULT_EXPIRES_IN", default=3600)
        entry["timeout_seconds"] = env.float(prefix + "TIMEOUT_SECONDS", default=10.0)
        integrations[name] = entry
    if missing:
        raise ImproperlyConfigured("missing OAuth integration settings: " + ", ".join(missing))
    return integrations


OAUTH_INTEGRATIONS = _oauth_integrations()

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "core.exception_handler.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Key save/test are throttled per user: a key-checking oracle is abuse.
    "DEFAULT_THROTTLE_RATES": {"byok_save": "10/hour", "byok_test": "30/hour"},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Niyra API",
    "DESCRIPTION": "Bring-your-own-key and credits core: keys, credits, routed LLM calls.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Two "kind" fields with different choices: each enum gets its own component name.
    "ENUM_NAME_OVERRIDES": {"NotificationKindEnum": "notifications.models.Kind"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema.add_error_responses",
    ],
}

# --- Security -------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Lax, not Strict: the OAuth callback is a top-level navigation from the provider and needs the session.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True  # no script reads it: htmx takes the token from the page (base.html)
# Content-Security-Policy (django-csp, through core.middleware.ContentSecurityPolicyMiddleware,
# which also adds the OAuth authorize origins to form-action). Only our own files: no inline
# script anywhere, no style attributes; an inline <style> needs the request's nonce (the API docs
# page) or is the 500 page's, allowed by hash because that page must render with nothing else.
# tests/security/test_headers.py keeps the hash in step with templates/500.html.
ERROR_PAGE_STYLE_HASH = "'sha256-a2Wd5GAaM9AVT9tf7b8PMcrIUcnz5cGaSynOwHiCtBM='"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp.NONE],
        "script-src": [csp.SELF],
        "style-src": [csp.SELF, csp.NONCE, ERROR_PAGE_STYLE_HASH],
        "img-src": [csp.SELF, "data:"],  # data: for the API docs' icons
        "font-src": [csp.SELF],
        "connect-src": [csp.SELF],
        "manifest-src": [csp.SELF],
        "form-action": [csp.SELF],
        "frame-ancestors": [csp.NONE],
        "base-uri": [csp.NONE],
    }
}
# Sign-in throttle (accounts.login): failed attempts per client IP and email, and per client IP,
# in fixed windows. Behind a proxy, CLIENT_IP_HEADER names the header it sets to the client's
# address (Fly: Fly-Client-IP); without it the socket's peer address is used.
LOGIN_FAILURES_PER_IP_EMAIL = env.int("LOGIN_FAILURES_PER_IP_EMAIL", default=5)
LOGIN_FAILURES_PER_IP = env.int("LOGIN_FAILURES_PER_IP", default=50)
LOGIN_THROTTLE_WINDOW_SECONDS = env.int("LOGIN_THROTTLE_WINDOW_SECONDS", default=15 * 60)
CLIENT_IP_HEADER = env.str("CLIENT_IP_HEADER", default="")

# --- Email (notifications) -------------------------------------------------------------------
# EMAIL_URL in django-environ's form: smtp+tls://user:password@smtp.example.com:587 in production
# (required there), the console in development (emails are printed by the web and worker logs).
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Niyra <notifications@niyra.ai>")
# Links in emails point here (the dashboard's own address, no trailing slash needed).
NIYRA_PUBLIC_URL = env.str("NIYRA_PUBLIC_URL", default="http://127.0.0.1:8000")

# --- Observability (docs/observability.md) ----------------------------------------------------
# Prometheus metrics: METRICS_LISTEN ("0.0.0.0:9091" on Fly, a private port fly.toml's [metrics]
# declares) is served by the root of each process tree: gunicorn's master for the web workers,
# the Celery worker's main process for its pool, or a single-process server for itself. Processes
# share their figures through PROMETHEUS_MULTIPROC_DIR (prometheus-client's multi-process mode).
# METRICS_ENABLED=False stops the recording (the routing benchmark compares the two).
METRICS_LISTEN = env.str("METRICS_LISTEN", default="")
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
# How often the scheduled `reconcile_ledger` runs in the worker (its mismatch count is a gauge).
LEDGER_RECONCILE_INTERVAL_SECONDS = env.int("LEDGER_RECONCILE_INTERVAL_SECONDS", default=3600)
# Error reports: Sentry when SENTRY_DSN is set (core.sentry), scrubbed of keys, tokens and bodies.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="production")
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0)
# Log lines: "json" (one JSON object per line, production) or "text" (development).
LOG_FORMAT = env.str("LOG_FORMAT", default="json")

# --- Logging: provider keys and bearer tokens are redacted from every record ------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact_secrets": {"()": "core.logging.RedactSecretsFilter"},
        "log_context": {"()": "core.logging.LogContextFilter"},
        # Beat's periodic ticks (niyra/celery.py) log nothing at INFO while they have nothing to do.
        "quiet_idle_ticks": {
            "()": "core.logging.QuietIdleTicksFilter",
            "task_names": [
                "core.tasks.heartbeat",
                "credits.tasks.expire_holds",
                "connections.tasks.oauth_refresh_tick",
                "byok.tasks.key_health_tick",
                "credits.tasks.balance_alerts_dispatch",
                "credits.tasks.ledger_reconcile",
                "notifications.tasks.notification_email_sweep",
                "core.liveness.ping",
            ],
        },
    },
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        # One JSON object per line: time, level, logger, message, the request id / call id / task
        # of the context (core.logging.LogContextFilter) and any `extra` fields.
        "json": {
            "()": "core.logging.JsonFormatter",  # python-json-logger's, the traceback redacted
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601, UTC
            # Celery's own lines pass their arguments again in `data` (the traceback twice).
            "reserved_attrs": [*RESERVED_ATTRS, "data"],
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            # The context first, so the redaction filter sees every field the line will carry.
            "filters": ["log_context", "redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # The SDKs' HTTP clients log request details at DEBUG; never let them run at DEBUG.
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "anthropic": {"level": "WARNING"},
        "openai": {"level": "WARNING"},
        # Beat's ticks: filters on the loggers whose lines they quiet (a handler would see all).
        "celery.beat": {"filters": ["quiet_idle_ticks"]},
        "celery.worker.strategy": {"filters": ["quiet_idle_ticks"]},
        # One line per task run, by the process that ran it (core.task_observability): outcome,
        # duration, retries, the queuing request's id. Celery's own INFO lines for a run
        # ("succeeded in", "retry") say less and would double it, so its tracer logs only from
        # WARNING: a failure's ERROR line, with the traceback, stays. The worker's "received"
        # lines stay: a message reserved is not a run (an ETA task waits; a redelivery shows).
        "niyra.tasks": {"filters": ["quiet_idle_ticks"]},
        "celery.app.trace": {"level": "WARNING"},
    },
}
