"""OAuth connections move here from byok, keeping every row and ciphertext.

State only: the models are created in this app's state on the tables byok created
(`byok_oauthconnection`, `byok_oauthauthorizationrequest`, kept through `db_table`), and
byok.0004 removes them from byok's state. No table is created, copied or renamed, so a process
still running the previous release keeps working until it is replaced, and the ciphertexts stay
byte for byte (their associated data names the user and the integration, not the table).

The content types move from app label `byok` to `connections`, so the permissions (same ids,
new label) and the Support group's grants of them follow, as do admin log entries.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED_MODELS = ("oauthconnection", "oauthauthorizationrequest")


def _move_content_types(apps, *, from_label, to_label):
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(app_label=from_label, model__in=MOVED_MODELS).update(app_label=to_label)


def content_types_to_connections(apps, schema_editor):
    _move_content_types(apps, from_label="byok", to_label="connections")


def content_types_to_byok(apps, schema_editor):
    _move_content_types(apps, from_label="connections", to_label="byok")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("byok", "0003_oauth_verbose_names"),
        # On a new database this data migration creates the byok content types, permissions and
        # Support group grants that are moved below.
        ("accounts", "0002_support_group"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="OAuthAuthorizationRequest",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("integration", models.CharField(max_length=32)),
                        ("state_hash", models.CharField(max_length=64, unique=True)),
                        (
                            "code_verifier_ciphertext",
                            models.BinaryField(help_text="AES-256-GCM envelope (core.crypto). Never shown."),
                        ),
                        ("encryption_key_id", models.CharField(db_index=True, max_length=32)),
                        ("redirect_uri", models.CharField(max_length=500)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("expires_at", models.DateTimeField(db_index=True)),
                        ("consumed_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "byok_oauthauthorizationrequest",
                        "ordering": ("-created_at",),
                        "verbose_name": "OAuth authorization request",
                    },
                ),
                migrations.CreateModel(
                    name="OAuthConnection",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "integration",
                            models.CharField(help_text="A name from settings.OAUTH_INTEGRATIONS.", max_length=32),
                        ),
                        (
                            "status",
                            models.CharField(
                                choices=[("active", "Active"), ("needs_reauth", "Needs reconnect"), ("error", "Error")],
                                default="active",
                                max_length=16,
                            ),
                        ),
                        (
                            "access_token_ciphertext",
                            models.BinaryField(help_text="AES-256-GCM envelope (core.crypto). Never shown."),
                        ),
                        (
                            "refresh_token_ciphertext",
                            models.BinaryField(
                                blank=True,
                                help_text="AES-256-GCM envelope, or NULL when the provider issued none. Never shown.",
                                null=True,
                            ),
                        ),
                        (
                            "encryption_key_id",
                            models.CharField(
                                db_index=True,
                                help_text="Keyring key id both token ciphertexts are sealed with.",
                                max_length=32,
                            ),
                        ),
                        (
                            "scopes",
                            models.CharField(blank=True, help_text="Granted scopes, space-separated.", max_length=1000),
                        ),
                        (
                            "expires_at",
                            models.DateTimeField(blank=True, help_text="When the access token expires.", null=True),
                        ),
                        (
                            "token_issued_at",
                            models.DateTimeField(help_text="When the current access token was obtained."),
                        ),
                        ("connected_at", models.DateTimeField()),
                        ("last_refreshed_at", models.DateTimeField(blank=True, null=True)),
                        ("consecutive_failures", models.PositiveIntegerField(default=0)),
                        (
                            "last_error_code",
                            models.CharField(
                                blank=True, help_text="Error catalogue code of the last failure.", max_length=48
                            ),
                        ),
                        (
                            "last_error_reason",
                            models.CharField(
                                blank=True,
                                help_text="What the provider said (its error code or HTTP status). Never a token.",
                                max_length=120,
                            ),
                        ),
                        ("last_error_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="oauth_connections",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "byok_oauthconnection",
                        "ordering": ("user_id", "integration"),
                        "verbose_name": "OAuth connection",
                        "indexes": [
                            models.Index(
                                condition=models.Q(("status", "active")),
                                fields=["expires_at"],
                                name="oauth_connection_due_idx",
                            )
                        ],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("user", "integration"), name="oauth_connection_one_per_integration"
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("status__in", ["active", "needs_reauth", "error"])),
                                name="oauth_connection_known_status",
                            ),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_to_connections, content_types_to_byok, elidable=False),
    ]
