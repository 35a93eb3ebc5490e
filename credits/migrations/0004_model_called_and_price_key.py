"""The model called beside the price key it was priced by.

Until now ``model`` held the price key (``claude-opus-4`` for Opus 4.6, 4.7 and 4.8 alike). Each
existing row keeps it as ``price_key``; its ``model`` becomes the model called where the row
recorded it (a routed call's ``details.model``), else it stays the price key, the most it knows.
The ledger's append-only trigger is set aside for this one backfill, inside the migration's
transaction (``ALTER TABLE`` locks the table, so no other write sees it off).
"""

from django.db import migrations, models

_BACKFILL = """
    UPDATE {table} SET price_key = model, model = COALESCE(NULLIF(LEFT(details->>'model', 64), ''), model)
    WHERE model <> ''
"""
_UNDO = "UPDATE {table} SET model = price_key WHERE price_key <> ''"
_TRIGGER = "ALTER TABLE credits_ledgerentry {} TRIGGER credits_ledger_append_only"


def _on_both_tables(statement: str) -> list[str]:
    return [
        statement.format(table="credits_credithold"),
        _TRIGGER.format("DISABLE"),
        statement.format(table="credits_ledgerentry"),
        _TRIGGER.format("ENABLE"),
    ]


class Migration(migrations.Migration):
    dependencies = [
        ("credits", "0003_ledger_statement_order"),
    ]

    operations = [
        migrations.AddField(
            model_name="credithold",
            name="price_key",
            field=models.CharField(blank=True, help_text="The price book's key it is priced by.", max_length=64),
        ),
        migrations.AddField(
            model_name="ledgerentry",
            name="price_key",
            field=models.CharField(
                blank=True, help_text="The price book's key it was priced by (e.g. claude-opus-4).", max_length=64
            ),
        ),
        migrations.AlterField(
            model_name="credithold",
            name="model",
            field=models.CharField(blank=True, help_text="The model called, as the caller named it.", max_length=64),
        ),
        migrations.AlterField(
            model_name="ledgerentry",
            name="model",
            field=models.CharField(blank=True, help_text="The model called (e.g. claude-opus-4-6).", max_length=64),
        ),
        migrations.RunSQL(_on_both_tables(_BACKFILL), reverse_sql=_on_both_tables(_UNDO)),
    ]
