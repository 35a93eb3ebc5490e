"""The key health monitor: a beat tick that queues the scheduled check of each due key.

Tasks take a key's id only (never the key), re-read it under its row lock and are idempotent: a
replayed or duplicate check finds the key no longer due and does nothing. The rules live in
`byok.services.provider_key_check`.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from byok.metrics import provider_keys_set
from byok.selectors import provider_key_counts, provider_key_ids_due
from byok.services import provider_key_check
from core import metrics

logger = logging.getLogger(__name__)

CHECK_TASK = "byok.tasks.key_health_check"


def spread_countdowns(count: int, *, window: float) -> list[float]:
    """`count` start offsets spread evenly over `window` seconds: one provider's checks never
    arrive together."""
    return [window * index / count for index in range(count)] if count else []


@shared_task(name="byok.tasks.key_health_tick", ignore_result=True)
def key_health_tick() -> int:
    """Every BYOK_HEALTH_TICK_SECONDS (niyra/celery.py): queue the check of the due keys, at most
    BYOK_HEALTH_MAX_PER_PROVIDER_PER_TICK per provider, spread evenly across the tick. Keys left
    over stay due for the next tick. One indexed query; ids only (and, when metrics are recorded,
    one GROUP BY for the keys per provider and status)."""
    window = float(settings.BYOK_HEALTH_TICK_SECONDS)
    due = provider_key_ids_due(now=timezone.now(), per_provider=settings.BYOK_HEALTH_MAX_PER_PROVIDER_PER_TICK)
    planned = [
        (key_id, countdown)
        for ids in due.values()
        for key_id, countdown in zip(ids, spread_countdowns(len(ids), window=window), strict=True)
    ]

    def fan_out() -> None:
        queued = 0
        try:
            with key_health_check.app.producer_or_acquire() as producer:  # one broker connection
                for key_id, countdown in planned:
                    # Expires with the next tick, which finds a key whose check was lost still due.
                    key_health_check.apply_async(
                        kwargs={"key_id": key_id}, countdown=countdown, expires=countdown + window, producer=producer
                    )
                    queued += 1
        except OperationalError:
            logger.warning("key_health_tick queued %s of %s: the broker is unavailable", queued, len(planned))

    transaction.on_commit(fan_out)  # outside a transaction (as under beat): runs right away
    if planned:  # idle, the tick stays quiet (LOGGING's quiet_idle_ticks)
        logger.info("key_health_tick queued=%s", {provider: len(ids) for provider, ids in due.items()})
    if metrics.enabled():
        provider_keys_set(provider_key_counts())
    return len(planned)


@shared_task(name=CHECK_TASK, ignore_result=True)
def key_health_check(key_id: int) -> str:
    """Probe one key if its check is due; record what the provider said (byok.services)."""
    outcome = provider_key_check(key_id=key_id)
    logger.info("key_health_check key=%s outcome=%s", key_id, outcome)
    return outcome
