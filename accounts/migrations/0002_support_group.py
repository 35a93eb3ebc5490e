"""Create the "Support" group with exactly the permissions support staff need (accounts.support)."""

from django.db import migrations


def create_support_group(apps, schema_editor):
    from accounts.support import support_group_sync

    support_group_sync(apps=apps)


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
