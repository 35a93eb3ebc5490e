"""Tell every gateway process when a user's routing facts change: ``pg_notify('niyra_routing',
<user id>)`` from triggers on the tables the caller cache reads (routing/gateway/cache.py).

Triggers, not service code, so every path that writes (services, the admin, a shell, a
migration) invalidates. A notification is sent on commit (none for a rolled-back change), and
one per user per transaction however many rows changed. What does not change routing sends
nothing: a token's ``last_used_at``, an account's balance and reservation (every call moves
them), a key's test stamps.
"""

from django.db import migrations

CHANNEL = "niyra_routing"

FUNCTION = f"""
CREATE FUNCTION niyra_routing_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb;
BEGIN
    -- TG_ARGV[0]: the column holding the user's id (users: id; the others: user_id).
    IF TG_OP = 'DELETE' THEN changed := to_jsonb(OLD); ELSE changed := to_jsonb(NEW); END IF;
    PERFORM pg_notify('{CHANNEL}', changed ->> TG_ARGV[0]);
    RETURN NULL;
END
$$;
"""

# (trigger name, table, events and condition, user id column)
TRIGGERS = (
    (
        "apitoken_revoked_notify",
        "accounts_apitoken",
        "AFTER UPDATE OF revoked_at ON accounts_apitoken FOR EACH ROW "
        "WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)",
        "user_id",
    ),
    ("apitoken_deleted_notify", "accounts_apitoken", "AFTER DELETE ON accounts_apitoken FOR EACH ROW", "user_id"),
    (
        "user_active_notify",
        "accounts_user",
        "AFTER UPDATE OF is_active ON accounts_user FOR EACH ROW WHEN (OLD.is_active IS DISTINCT FROM NEW.is_active)",
        "id",
    ),
    ("user_deleted_notify", "accounts_user", "AFTER DELETE ON accounts_user FOR EACH ROW", "id"),
    (
        "billingaccount_plan_notify",
        "credits_billingaccount",
        "AFTER UPDATE OF plan, apex_enabled ON credits_billingaccount FOR EACH ROW "
        "WHEN (OLD.plan IS DISTINCT FROM NEW.plan OR OLD.apex_enabled IS DISTINCT FROM NEW.apex_enabled)",
        "user_id",
    ),
    (
        "billingaccount_created_notify",
        "credits_billingaccount",
        "AFTER INSERT OR DELETE ON credits_billingaccount FOR EACH ROW",
        "user_id",
    ),
    (
        "routingpreference_notify",
        "routing_routingpreference",
        "AFTER INSERT OR UPDATE OR DELETE ON routing_routingpreference FOR EACH ROW",
        "user_id",
    ),
    (
        "providerkey_changed_notify",
        "byok_providerkey",
        "AFTER INSERT OR DELETE ON byok_providerkey FOR EACH ROW",
        "user_id",
    ),
    (
        "providerkey_updated_notify",
        "byok_providerkey",
        # A key test that only stamps when it ran changes nothing a call routes on.
        "AFTER UPDATE ON byok_providerkey FOR EACH ROW "
        "WHEN ((to_jsonb(OLD) - 'last_tested_at' - 'updated_at') IS DISTINCT FROM "
        "(to_jsonb(NEW) - 'last_tested_at' - 'updated_at'))",
        "user_id",
    ),
)


def _create(name: str, table: str, when: str, column: str) -> str:
    return f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION niyra_routing_notify('{column}');"


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0005_routedcall_gateway_usage"),
        ("accounts", "0002_support_group"),
        ("credits", "0004_model_called_and_price_key"),
        ("byok", "0004_oauth_models_to_connections"),
    ]

    operations = [
        migrations.RunSQL(FUNCTION, reverse_sql="DROP FUNCTION niyra_routing_notify();"),
        *(
            migrations.RunSQL(_create(name, table, when, column), reverse_sql=f"DROP TRIGGER {name} ON {table};")
            for name, table, when, column in TRIGGERS
        ),
    ]
