"""Support may read what a user was told (the notifications list in the admin), view-only."""

from django.db import migrations

SUPPORT_PERMISSIONS = (
    ("accounts", "user", "view_user"),
    ("accounts", "auditevent", "view_auditevent"),
    ("credits", "billingaccount", "view_billingaccount"),
    ("credits", "billingaccount", "grant_credits"),
    ("credits", "billingaccount", "change_plan"),
    ("credits", "billingaccount", "manage_apex"),
    ("credits", "ledgerentry", "view_ledgerentry"),
    ("credits", "credithold", "view_credithold"),
    ("byok", "providerkey", "view_providerkey"),
    ("byok", "providerkey", "delete_providerkey"),
    ("connections", "oauthconnection", "view_oauthconnection"),
    ("connections", "oauthconnection", "change_oauthconnection"),
    ("notifications", "notification", "view_notification"),
)


def sync_support_group(apps, schema_editor):
    from accounts.support import support_group_sync

    support_group_sync(apps=apps, permissions=SUPPORT_PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_support_group"),
        # After the OAuth models left byok's state: the sync creates the permissions of every app
        # it names from the state it is given, and byok's must no longer hold them.
        ("byok", "0004_oauth_models_to_connections"),
        ("connections", "0001_initial"),
        ("notifications", "0001_notifications"),
    ]

    operations = [migrations.RunPython(sync_support_group, migrations.RunPython.noop)]
