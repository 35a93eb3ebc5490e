"""Project-level tasks: liveness of the worker/beat pair and a broker round-trip probe."""

from __future__ import annotations

from celery import shared_task
from django.core.cache import cache
from django.utils import timezone

HEARTBEAT_CACHE_KEY = "niyra:worker-heartbeat"


@shared_task(name="core.tasks.heartbeat", ignore_result=True)
def heartbeat() -> None:
    """Beat enqueues this every minute; a worker records when it last ran one."""
    cache.set(HEARTBEAT_CACHE_KEY, timezone.now().isoformat(), timeout=None)


@shared_task(name="core.tasks.echo", ignore_result=True)
def echo(*, value: str, cache_key: str) -> None:
    """Writes `value` to the shared cache: proves a real round trip through broker and worker."""
    cache.set(cache_key, value, timeout=300)
