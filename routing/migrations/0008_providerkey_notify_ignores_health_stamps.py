"""The routing cache's key trigger (0006) ignores the stamps byok's key health writes.

A routed call stamps its key's ``last_used_at`` (at most once a minute), and the scheduled check
stamps ``last_checked_at`` and ``next_check_at``: none of them changes how a call routes, so none
may flush the caller cache of every gateway process. A status change (and its
``rate_limited_until``) still notifies.
"""

from django.db import migrations

IGNORED_BEFORE = ("last_tested_at", "updated_at")
IGNORED = (*IGNORED_BEFORE, "last_used_at", "last_checked_at", "next_check_at")


def _trigger(ignored: tuple[str, ...]) -> str:
    minus = " ".join(f"- '{column}'" for column in ignored)
    return (
        "CREATE TRIGGER providerkey_updated_notify AFTER UPDATE ON byok_providerkey FOR EACH ROW "
        f"WHEN ((to_jsonb(OLD) {minus}) IS DISTINCT FROM (to_jsonb(NEW) {minus})) "
        "EXECUTE FUNCTION niyra_routing_notify('user_id');"
    )


DROP = "DROP TRIGGER providerkey_updated_notify ON byok_providerkey;"


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0007_receipts_and_fallback_cap"),
        ("byok", "0005_key_health"),
    ]

    operations = [
        migrations.RunSQL(DROP + _trigger(IGNORED), reverse_sql=DROP + _trigger(IGNORED_BEFORE)),
    ]
