"""A routed call paid in credits counts what it was charged under its category (credits.metrics),
when its close has committed."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from routing.models import RoutedCall
from tests.routing.gateway.conftest import Niyra

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_call_on_credits_counts_its_charge_under_llm(niyra: Niyra, make_account: Any) -> None:
    user = make_account(plan="free")
    before = REGISTRY.get_sample_value("niyra_credits_charged_millicredits_total", {"category": "llm"}) or 0.0

    niyra.anthropic(user).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "Hello"}]
    )

    call = RoutedCall.objects.get(user=user)
    assert call.credits_charged > 0
    after = REGISTRY.get_sample_value("niyra_credits_charged_millicredits_total", {"category": "llm"})
    assert after == before + call.credits_charged
