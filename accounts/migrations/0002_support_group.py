"""Create the "Support" group with exactly the permissions support staff need (accounts.support).

The list is the one of the day this migration was written: the OAuth connection models were in
byok then. connections.0001 moves their content types (and with them these grants) to
`connections`, which is what `accounts.support.SUPPORT_PERMISSIONS` says today.
"""

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
    ("byok", "oauthconnection", "view_oauthconnection"),
    ("byok", "oauthconnection", "change_oauthconnection"),
)


def create_support_group(apps, schema_editor):
    from accounts.support import support_group_sync

    support_group_sync(apps=apps, permissions=SUPPORT_PERMISSIONS)


def remove_support_group(apps, schema_editor):
    from accounts.support import SUPPORT_GROUP

    apps.get_model("auth", "Group").objects.filter(name=SUPPORT_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("credits", "0001_initial"),
        ("byok", "0002_oauth_connections"),
    ]

    operations = [migrations.RunPython(create_support_group, remove_support_group)]
