"""Low-balance alerts: thresholds and the alert band on the billing account, the outbox of
crossings, and the trigger that keeps them.

The trigger runs BEFORE every UPDATE of the balance (and of the thresholds), on the row the
statement has locked, whatever statement or code path moved the money (the services, the
gateway's async settle, the admin): OLD is the latest committed version, so of concurrent
charges exactly one sees each crossing. It computes the band — NULL above every threshold, N
below the threshold N (the lowest it is below), 0 used up — and, when the balance moves it:

* down to a worse band: one ``low`` or ``depleted`` row (and the account is "warned");
* up above every threshold, after a warning: one ``recovered`` row.

Moving up between thresholds, a new account, or a change of thresholds sets the band quietly.
"""

import django.contrib.postgres.fields
import django.db.models.deletion
from django.db import migrations, models

import credits.models

_TRIGGER = """
    CREATE FUNCTION credits_balance_alert() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        band bigint := NULL;
        threshold bigint;
        kind text := NULL;
    BEGIN
        IF NEW.balance <= 0 THEN
            band := 0;
        ELSE
            FOREACH threshold IN ARRAY NEW.alert_thresholds LOOP
                IF NEW.balance < threshold AND (band IS NULL OR threshold < band) THEN
                    band := threshold;
                END IF;
            END LOOP;
        END IF;
        IF TG_OP = 'UPDATE' AND NEW.balance <> OLD.balance THEN
            -- NULL (above every threshold) is the best band.
            IF NEW.balance < OLD.balance
               AND COALESCE(band, 9223372036854775807) < COALESCE(OLD.alert_band, 9223372036854775807) THEN
                kind := CASE WHEN band = 0 THEN 'depleted' ELSE 'low' END;
                NEW.alert_warned := true;
            ELSIF band IS NULL AND OLD.alert_band IS NOT NULL AND OLD.alert_warned THEN
                kind := 'recovered';
            END IF;
            IF kind IS NOT NULL THEN
                INSERT INTO credits_balancealert (account_id, kind, band_from, band_to, balance, created_at)
                VALUES (NEW.id, kind, OLD.alert_band, band, NEW.balance, now());
            END IF;
        END IF;
        IF band IS NULL THEN
            NEW.alert_warned := false;
        END IF;
        NEW.alert_band := band;
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER credits_balance_alert
    BEFORE INSERT OR UPDATE OF balance, alert_thresholds ON credits_billingaccount
    FOR EACH ROW EXECUTE FUNCTION credits_balance_alert();
    -- Existing accounts: their band now, quietly (only the thresholds are in the SET list).
    UPDATE credits_billingaccount SET alert_thresholds = alert_thresholds;
"""
_DROP = """
    DROP TRIGGER IF EXISTS credits_balance_alert ON credits_billingaccount;
    DROP FUNCTION IF EXISTS credits_balance_alert();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("credits", "0004_model_called_and_price_key"),
    ]

    operations = [
        migrations.AddField(
            model_name="billingaccount",
            name="alert_band",
            field=models.BigIntegerField(
                blank=True,
                editable=False,
                help_text="Where the balance stands: empty = above every threshold; N = below the threshold N (millicredits, the lowest it is below); 0 = used up.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="billingaccount",
            name="alert_thresholds",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.BigIntegerField(),
                default=credits.models.default_alert_thresholds,
                help_text="Millicredits, highest first: a balance falling below one is a low-balance alert.",
                size=5,
            ),
        ),
        migrations.AddField(
            model_name="billingaccount",
            name="alert_warned",
            field=models.BooleanField(
                default=False,
                editable=False,
                help_text="A low or used-up alert went out since the balance was last above every threshold.",
            ),
        ),
        migrations.CreateModel(
            name="BalanceAlert",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("low", "Below a threshold"),
                            ("depleted", "Used up"),
                            ("recovered", "Above every threshold again"),
                        ],
                        max_length=16,
                    ),
                ),
                (
                    "band_from",
                    models.BigIntegerField(blank=True, help_text="The band before (see alert_band).", null=True),
                ),
                (
                    "band_to",
                    models.BigIntegerField(blank=True, help_text="The band after (see alert_band).", null=True),
                ),
                ("balance", models.BigIntegerField(help_text="Millicredits, right after the crossing.")),
                ("created_at", models.DateTimeField()),
                ("dispatched_at", models.DateTimeField(blank=True, null=True)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="alerts", to="credits.billingaccount"
                    ),
                ),
            ],
            options={
                "ordering": ("-id",),
                "indexes": [
                    models.Index(
                        condition=models.Q(("dispatched_at__isnull", True)), fields=["id"], name="balance_alert_pending"
                    )
                ],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("kind__in", ["low", "depleted", "recovered"])),
                        name="balance_alert_kind_known",
                    )
                ],
            },
        ),
        migrations.RunSQL(_TRIGGER, reverse_sql=_DROP),
    ]
