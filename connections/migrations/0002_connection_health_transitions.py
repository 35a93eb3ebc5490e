"""Connection health: a counter of transitions (stopped working / works again) that names each
one's single notification, and when the last one happened. Two added columns with constant
defaults: PostgreSQL adds them without rewriting the table."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("connections", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="oauthconnection",
            name="status_changed_at",
            field=models.DateTimeField(
                blank=True, help_text="When it last stopped or started working again (NULL: never changed).", null=True
            ),
        ),
        migrations.AddField(
            model_name="oauthconnection",
            name="status_changes",
            field=models.PositiveIntegerField(
                default=0,
                help_text="How many times the connection stopped or started working again (needs_reauth, error, recovered): each transition's number names its one notification.",
            ),
        ),
    ]
