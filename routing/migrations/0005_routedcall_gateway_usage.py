"""The gateway's routed calls: which API surface was called, the provider's full usage
breakdown, cache-write and reasoning tokens, and what the usage would have cost in credits
(a BYOK call's saving)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0004_routedcall_fell_back"),
    ]

    operations = [
        migrations.AddField(
            model_name="routedcall",
            name="tokens_cache_write",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="routedcall",
            name="tokens_reasoning",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="routedcall",
            name="usage",
            field=models.JSONField(
                blank=True, default=dict, help_text="Everything the provider reported (non-zero kinds)."
            ),
        ),
        migrations.AddField(
            model_name="routedcall",
            name="surface",
            field=models.CharField(
                blank=True, default="", help_text="The API called, e.g. openai.chat.", max_length=32
            ),
        ),
        migrations.AddField(
            model_name="routedcall",
            name="credits_would_cost",
            field=models.BigIntegerField(
                default=0,
                help_text="Millicredits the usage costs at the price book's rates (what a BYOK call saved).",
            ),
        ),
    ]
