"""Entries name the model called (what the user sees) beside the price key it was priced by;
rows from before the split keep their meaning (their ``model`` was the price key)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from credits.pricing import Usage, price_usage
from credits.services.holds import credit_hold, credit_settle
from credits.services.ledger import credit_usage_record


@pytest.mark.django_db
def test_a_settled_hold_shows_the_model_called_and_is_priced_by_its_price_key(funded_user: Any) -> None:
    hold = credit_hold(
        user=funded_user,
        model="claude-opus-4-7",
        price_key="claude-opus-4",
        worst=Usage(10, 10),
        idempotency_key="h",
    )
    entry = credit_settle(hold_id=hold.pk, usage=Usage(10, 5), idempotency_key="s")

    assert (hold.model, hold.price_key) == ("claude-opus-4-7", "claude-opus-4")
    assert (entry.model, entry.price_key) == ("claude-opus-4-7", "claude-opus-4")
    assert -entry.amount == price_usage("claude-opus-4", Usage(10, 5))
    assert entry.description.startswith("claude-opus-4-7: ")


@pytest.mark.django_db
def test_a_price_key_named_alone_is_both(funded_user: Any) -> None:
    entry = credit_usage_record(user=funded_user, model="claude-sonnet-4", usage=Usage(1, 1), idempotency_key="b")
    assert (entry.model, entry.price_key) == ("claude-sonnet-4", "claude-sonnet-4")


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_existing_rows_meaningful(funded_user: Any) -> None:
    """Before it, ``model`` held the price key; a routed call also kept the model called in its
    details. After it: the price key moves to ``price_key``, ``model`` is the model called where
    the row knows it, else still the price key."""
    executor = MigrationExecutor(connection)
    executor.migrate([("credits", "0003_ledger_statement_order")])
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id FROM credits_billingaccount WHERE user_id = %s", [funded_user.pk])
            account_id = cursor.fetchone()[0]
            for key, details in (("routed", '{"model": "claude-opus-4-8"}'), ("older", "{}")):
                cursor.execute(
                    """INSERT INTO credits_ledgerentry (account_id, amount, category, balance_after,
                        idempotency_key, fingerprint, description, model, key_source, details, pricing,
                        flagged, created_at)
                    VALUES (%s, 0, 'llm', 100000, %s, 'f', '', 'claude-opus-4', 'byok', %s::jsonb, '{}',
                        false, now())""",
                    [account_id, key, details],
                )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT idempotency_key, model, price_key FROM credits_ledgerentry WHERE model <> '' ORDER BY id"
        )
        rows = cursor.fetchall()
    assert rows == [("routed", "claude-opus-4-8", "claude-opus-4"), ("older", "claude-opus-4", "claude-opus-4")]
