"""Provider key metrics: every validation request's outcome, every real status change (counted
once its transaction commits), the keys per provider and status (the health tick), and the
key-check throttle's refusals. Tests run single-process: the default registry holds the figures.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from django.db import transaction
from prometheus_client import REGISTRY

from byok import tasks
from byok.models import KeyStatus
from byok.services import provider_key_check, provider_key_save, provider_key_test
from byok.throttle import TEST, key_probe_budget_spend
from core import errors
from core.errors import NiyraError
from providers import Provider
from sandbox import anthropic_key, openai_key
from tests.byok.test_key_health import observe, stored_key

pytestmark = pytest.mark.django_db


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def validations(provider: str, outcome: str) -> float:
    return value("niyra_key_validations_total", provider=provider, outcome=outcome)


def changes(provider: str, status: str) -> float:
    return value("niyra_key_status_changes_total", provider=provider, status=status)


class Rollback(Exception):
    pass


def test_save_test_and_the_scheduled_check_count_each_validation_and_each_status_change(
    pro_user: Any, make_plan_user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    valid, invalid, limited = (validations("anthropic", o) for o in ("valid", "invalid", "rate_limited"))
    to_valid, to_invalid, to_limited = (changes("anthropic", s) for s in ("valid", "invalid", "rate_limited"))

    # A key the provider rejects: one validation, nothing stored, no status change
    with pytest.raises(NiyraError) as caught, django_capture_on_commit_callbacks(execute=True):
        provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key("invalid"))
    assert caught.value.spec is errors.KEY_INVALID
    assert validations("anthropic", "invalid") == invalid + 1
    assert changes("anthropic", "invalid") == to_invalid

    # A good key: one validation; the new key moved to valid
    with django_capture_on_commit_callbacks(execute=True):
        provider_key_save(user=pro_user, provider="anthropic", key=anthropic_key())
    assert validations("anthropic", "valid") == valid + 1
    assert changes("anthropic", "valid") == to_valid + 1

    # Test key confirms it: one validation, no change
    with django_capture_on_commit_callbacks(execute=True):
        provider_key_test(user=pro_user, provider="anthropic")
    assert validations("anthropic", "valid") == valid + 2
    assert changes("anthropic", "valid") == to_valid + 1

    # The scheduled check finds a valid key rate limited now: one validation, one change
    due = stored_key(make_plan_user("pro"), "anthropic", anthropic_key("ratelimit"), due=True)
    with django_capture_on_commit_callbacks(execute=True):
        assert provider_key_check(key_id=due.pk) == KeyStatus.RATE_LIMITED
    assert validations("anthropic", "rate_limited") == limited + 1
    assert changes("anthropic", "rate_limited") == to_limited + 1


def test_a_routed_observation_that_invalidates_a_key_counts_one_change_once_committed(
    pro_user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    key = stored_key(pro_user, "openai", openai_key())
    before = changes("openai", "invalid")

    # Rolled back: not counted
    with django_capture_on_commit_callbacks(execute=True), contextlib.suppress(Rollback), transaction.atomic():
        observe(key, "invalid")
        raise Rollback
    assert changes("openai", "invalid") == before

    # Committed: counted once; the same news again (a retried call) is no change
    with django_capture_on_commit_callbacks(execute=True):
        observe(key, "invalid")
        observe(key, "invalid")
    assert changes("openai", "invalid") == before + 1


def test_the_health_tick_sets_the_keys_per_provider_and_status(make_plan_user: Any) -> None:
    first, second, third = (make_plan_user("pro") for _ in range(3))
    stored_key(first, "anthropic", anthropic_key())
    stored_key(second, "anthropic", anthropic_key())
    invalid = stored_key(third, "openai", openai_key(), status=KeyStatus.INVALID)

    tasks.key_health_tick()

    def keys(provider: str, status: str) -> float | None:
        return REGISTRY.get_sample_value("niyra_provider_keys", {"provider": provider, "status": status})

    assert keys("anthropic", "valid") == 2
    assert keys("openai", "invalid") == 1
    assert keys("openai", "valid") == 0  # every pair is set, none left out
    assert {keys(p, s) for p in Provider.values for s in KeyStatus.values} == {0, 1, 2}

    invalid.delete()
    tasks.key_health_tick()
    assert keys("openai", "invalid") == 0  # a count that drops to zero shows


def test_a_throttle_refusal_counts_by_scope(pro_user: Any, settings: Any) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {TEST: "1/hour"}}
    before = value("niyra_throttle_refusals_total", scope=TEST)

    key_probe_budget_spend(user_id=pro_user.pk, scope=TEST)
    assert value("niyra_throttle_refusals_total", scope=TEST) == before
    with pytest.raises(NiyraError) as caught:
        key_probe_budget_spend(user_id=pro_user.pk, scope=TEST)

    assert caught.value.spec is errors.THROTTLED
    assert value("niyra_throttle_refusals_total", scope=TEST) == before + 1


def test_validations_and_changes_are_recorded_only_while_metrics_are_enabled(
    pro_user: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    valid, to_valid = validations("openai", "valid"), changes("openai", "valid")

    settings.METRICS_ENABLED = False
    with django_capture_on_commit_callbacks(execute=True):
        provider_key_save(user=pro_user, provider="openai", key=openai_key())
    assert (validations("openai", "valid"), changes("openai", "valid")) == (valid, to_valid)

    settings.METRICS_ENABLED = True
    provider_key_test(user=pro_user, provider="openai")
    assert validations("openai", "valid") == valid + 1
