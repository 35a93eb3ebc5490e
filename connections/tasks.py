"""The OAuth refresh daemon: a beat tick that fans out one refresh task per due connection.

Tasks take ids only (never a token), re-read under the row lock and are idempotent: a
duplicate (two beats, a redelivery after a worker died with `acks_late`) finds the token fresh
and does nothing. The rules live in `connections.services.connection_refresh`.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.conf import settings
from django.db import DatabaseError, transaction
from kombu.exceptions import OperationalError

from connections.metrics import oauth_refresh_tick_record, oauth_refresh_tick_timed
from connections.selectors import connection_ids_due, connection_worst_refresh_margin
from connections.services import REFRESH_TASK, connection_refresh, oauth_authorization_requests_purge
from core import metrics
from core.dbpool import database_unreachable

logger = logging.getLogger(__name__)

DATABASE_RETRY_MAX_SECONDS = 60  # the backoff's ceiling while the database can't be reached


@shared_task(name="connections.tasks.oauth_refresh_tick", ignore_result=True)
@oauth_refresh_tick_timed()
def oauth_refresh_tick() -> int:
    """Every `OAUTH_REFRESH_INTERVAL_SECONDS` (niyra/celery.py): queue a refresh for every active
    connection expiring before the next tick plus the margin. One indexed query; ids only (and,
    when metrics are recorded, one aggregate query for the worst refresh margin)."""
    ids = connection_ids_due()
    oauth_authorization_requests_purge()
    expires = settings.OAUTH_REFRESH_INTERVAL_SECONDS  # the next tick queues a fresh one anyway

    def fan_out() -> None:
        queued = 0
        try:
            with oauth_connection_refresh.app.producer_or_acquire() as producer:  # one broker connection
                for connection_id in ids:
                    oauth_connection_refresh.apply_async(
                        kwargs={"connection_id": connection_id}, expires=expires, producer=producer
                    )
                    queued += 1
        except OperationalError:
            # The broker is down: nothing is lost that the next tick does not find due again.
            logger.warning("oauth_refresh_tick queued %s of %s: the broker is unavailable", queued, len(ids))

    transaction.on_commit(fan_out)  # outside a transaction (as under beat): runs right away
    logger.info("oauth_refresh_tick due=%s", len(ids))
    if metrics.enabled():
        oauth_refresh_tick_record(due=len(ids), worst_margin_seconds=connection_worst_refresh_margin())
    return len(ids)


@shared_task(bind=True, name=REFRESH_TASK, ignore_result=True, max_retries=None)
def oauth_connection_refresh(self: Task, connection_id: int, force: bool = False) -> str:
    """Refresh one connection if it is due. Transient failures retry with exponential backoff
    while the token still works (the service decides when, and when to give up). So does a
    database that can't be reached (restarting, failing over): the token may lapse before the
    next tick, so the refresh is tried again as soon as it may be back."""
    try:
        result = connection_refresh(connection_id=connection_id, force=force)
    except DatabaseError as exc:
        if not database_unreachable(exc):
            raise
        countdown = min(2**self.request.retries, DATABASE_RETRY_MAX_SECONDS)
        logger.warning("refresh of connection %s: the database is unreachable; retry in %ss", connection_id, countdown)
        raise self.retry(
            exc=exc, countdown=countdown, expires=countdown + settings.OAUTH_REFRESH_INTERVAL_SECONDS
        ) from exc
    if result.retry_in is not None:
        raise self.retry(
            countdown=result.retry_in,
            expires=result.retry_in + settings.OAUTH_REFRESH_INTERVAL_SECONDS,
        )
    return result.outcome
