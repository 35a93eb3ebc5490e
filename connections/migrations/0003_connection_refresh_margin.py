"""The margin of each connection's latest refresh (how long before the old token's expiry it
happened), for the refresh tick's worst-margin gauge. A nullable column without a default:
PostgreSQL adds it without rewriting the table."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("connections", "0002_connection_health_transitions"),
    ]

    operations = [
        migrations.AddField(
            model_name="oauthconnection",
            name="last_refresh_margin_seconds",
            field=models.IntegerField(
                blank=True,
                help_text="How long before the old token's expiry the last refresh happened (negative: after it lapsed). NULL: not refreshed since connecting, or the old token did not expire.",
                null=True,
            ),
        ),
    ]
