"""The sign-in throttle counts each attempt it refuses (niyra_throttle_refusals_total, scope
"signin"); a wrong password the throttle let through is no refusal."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from prometheus_client import REGISTRY

from accounts.models import User

pytestmark = pytest.mark.django_db


def refusals() -> float:
    return REGISTRY.get_sample_value("niyra_throttle_refusals_total", {"scope": "signin"}) or 0.0


def test_a_refused_sign_in_attempt_counts(user: User, settings: Any) -> None:
    settings.LOGIN_FAILURES_PER_IP_EMAIL = 1
    settings.CLIENT_IP_HEADER = ""
    client = Client()
    before = refusals()

    client.post("/login/", {"username": user.email, "password": "wrong"})
    assert refusals() == before  # counted against the budget, not refused

    response = client.post("/login/", {"username": user.email, "password": "wrong"})
    assert response.status_code == 429
    assert refusals() == before + 1
