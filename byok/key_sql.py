"""Provider-key writes the gateway runs in its own round trips, as SQL text and parameters built
by pure functions (no I/O), in the manner of `credits.ledger_sql`: the async gateway runs the
very same statement on its psycopg connection.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from byok.models import ProviderKey
from credits.ledger_sql import Statement

KEYS = ProviderKey._meta.db_table
# "Last used" is shown to the minute: a key in steady use is written at most once a minute, not
# on every call (the row is also the one the health rule locks).
USED_RESOLUTION_SECONDS = 60


def provider_key_used(*, user_id: int, provider: str, at: datetime) -> Statement:
    """Record a routed call through the user's key at `at`: `last_used_at`, only when it is unset
    or older than a minute. `updated_at` stays: using a key does not change it. No row back."""
    sql = f"""
        UPDATE {KEYS} SET last_used_at = %(at)s
        WHERE user_id = %(user_id)s AND provider = %(provider)s
          AND (last_used_at IS NULL OR last_used_at < %(stale)s)
    """  # noqa: S608 - a constant table name; values are bound
    stale = at - timedelta(seconds=USED_RESOLUTION_SECONDS)
    return Statement(sql, {"user_id": user_id, "provider": provider, "at": at, "stale": stale})
