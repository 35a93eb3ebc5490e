"""OAuth connections now belong to the connections app (connections.0001): leave byok's state.

State only: the tables stay, owned by connections through `db_table`.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("byok", "0003_oauth_verbose_names"),
        ("connections", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="OAuthConnection"),
                migrations.DeleteModel(name="OAuthAuthorizationRequest"),
            ],
            database_operations=[],
        ),
        migrations.AlterField(
            model_name="providerkey",
            name="ciphertext",
            field=models.BinaryField(help_text="AES-256-GCM envelope (core.crypto). Never shown."),
        ),
    ]
