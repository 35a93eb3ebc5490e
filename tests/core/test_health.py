"""/healthz says the process is alive; /readyz checks database, broker and keyring."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_touching_anything(client: Client) -> None:
    response = client.get("/healthz", HTTP_HOST="10.0.0.7:8000")  # Fly's check uses the private IP

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_when_everything_answers(client: Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "keyring": "ok"}


@override_settings(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
def test_readyz_names_the_broker_when_it_is_down(client: Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["down"] == ["broker"]


@override_settings(NIYRA_ENCRYPTION_KEYS="k1:short")
def test_readyz_names_the_keyring_when_it_is_unusable(client: Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["down"] == ["keyring"]


def test_readyz_names_the_database_when_it_is_down(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import health

    def broken() -> None:
        raise ConnectionError("database went away")

    monkeypatch.setitem(health.CHECKS, "database", broken)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["down"] == ["database"]


def test_readyz_reports_when_a_worker_last_ran_the_heartbeat(client: Client) -> None:
    from django.core.cache import cache

    from core.tasks import HEARTBEAT_CACHE_KEY, heartbeat

    cache.delete(HEARTBEAT_CACHE_KEY)
    assert client.get("/readyz").json()["worker_last_seen"] is None

    heartbeat()

    assert client.get("/readyz").json()["worker_last_seen"] == cache.get(HEARTBEAT_CACHE_KEY)
