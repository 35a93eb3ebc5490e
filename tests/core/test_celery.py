"""Celery wiring: JSON only, late acks, time limits, one beat schedule, a real broker round trip."""

from __future__ import annotations

import time
import uuid

import pytest
from django.conf import settings
from django.core.cache import cache

from niyra.celery import app


def test_json_only_serialisation_and_safety_settings() -> None:
    conf = app.conf

    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit


def test_every_beat_entry_names_a_registered_task_and_expires() -> None:
    app.loader.import_default_modules()

    for name, entry in app.conf.beat_schedule.items():
        assert entry["task"] in app.tasks, name
        assert entry.get("options", {}).get("expires"), f"{name} has no expires"


@pytest.mark.redis
def test_round_trip_through_redis() -> None:
    from celery.contrib.testing.worker import start_worker

    from core.tasks import echo

    assert settings.CELERY_BROKER_URL.startswith("redis://")
    cache_key = f"test-echo-{uuid.uuid4()}"

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        echo.delay(value="round trip", cache_key=cache_key)
        deadline = time.monotonic() + 20
        while cache.get(cache_key) is None and time.monotonic() < deadline:
            time.sleep(0.05)

    assert cache.get(cache_key) == "round trip"
