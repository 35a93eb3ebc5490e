"""Liveness (`/healthz`) and readiness (`/readyz`: database, broker, and what the apps add).

Apps add their own readiness checks with `readiness_check_register` from their
`AppConfig.ready()` (core adds the keyring), so this base module imports no app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from kombu import Connection

from core.tasks import HEARTBEAT_CACHE_KEY

logger = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 2


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving requests. Touches nothing else, by design."""
    return JsonResponse({"status": "ok"})


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_broker() -> None:
    url: str = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        folder = Path(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]))
        if not folder.is_dir():
            raise OSError(f"queue folder {folder} is missing")
        return
    # The socket timeout bounds a broker that accepts the connection but never answers.
    options = {"socket_timeout": BROKER_TIMEOUT_SECONDS}
    with Connection(url, connect_timeout=BROKER_TIMEOUT_SECONDS, transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "broker": check_broker,
}


class ReadinessError(Exception):
    """A check's failure whose cause must not be logged (e.g. anything about the keyring)."""


def readiness_check_register(name: str, check: Callable[[], None]) -> None:
    """Add a dependency to `/readyz`: ``check`` raises when it is unusable."""
    CHECKS[name] = check


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when every dependency answers; 503 naming each one that doesn't."""
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
        except ReadinessError:
            results[name] = "down"
            logger.error("readiness: %s unusable", name)
        except Exception as exc:  # any failure means "not ready"; say which, never why in detail
            results[name] = "down"
            logger.warning("readiness: %s is down (%s)", name, exc.__class__.__name__)
        else:
            results[name] = "ok"
    down = [name for name, state in results.items() if state != "ok"]
    status = 503 if down else 200
    body = {
        "status": "down" if down else "ok",
        "checks": results,
        "down": down,
        "worker_last_seen": _worker_last_seen(),
    }
    return JsonResponse(body, status=status)


def _worker_last_seen() -> str | None:
    """When a worker last ran beat's heartbeat (informational: the web tier is ready without
    workers, but a stale value tells an operator that beat or the workers are down)."""
    try:
        value = cache.get(HEARTBEAT_CACHE_KEY)
    except Exception:  # the cache (Redis) being down is the broker check's news, not ours
        return None
    return value if isinstance(value, str) else None
