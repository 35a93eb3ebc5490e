"""The "Support" group: exactly the admin permissions support staff need, and nothing else.

What support does, and the permission each thing takes:

* find users by email and see their account page        accounts.view_user
* see the audit trail                                     accounts.view_auditevent
* see plan, balance, reserved, Apex; the ledger, holds    credits.view_billingaccount, view_ledgerentry,
                                                          view_credithold
* grant / adjust credits with a reason                    credits.grant_credits
* change plan; grant (or revoke) Apex                     credits.change_plan, credits.manage_apex
* see keys (status and hint) and disconnect one           byok.view_providerkey, byok.delete_providerkey
* see connections and "refresh now"                       connections.view_oauthconnection,
                                                          connections.change_oauthconnection
* see what a user was told, and whether it was emailed    notifications.view_notification

The byok "delete" and connections "change" permissions only unlock the admin *actions* (which
call the services and write audit rows): those admins refuse raw change and delete for everyone,
so no key material, ledger row or audit row can be edited. Users are view-only (no password reset, no
staff flag, no groups), API tokens are not visible at all.

`support_group_sync` is used by the data migration that creates the group and by
`manage.py support_group`, which puts it back to exactly this list (and can add a member).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions

SUPPORT_GROUP = "Support"

# (app label, model, codename)
SUPPORT_PERMISSIONS: tuple[tuple[str, str, str], ...] = (
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


def support_group_sync(
    *, apps: Any = global_apps, permissions: tuple[tuple[str, str, str], ...] = SUPPORT_PERMISSIONS
) -> Any:
    """Create the Support group if needed and set its permissions to exactly `permissions`.

    `apps` is the migration's historical registry when called from a migration, which passes the
    list as it was when the migration was written (the models it names may have moved since).
    Permissions are normally created after all migrations ran (post_migrate), so they are
    created here first.
    """
    for label in sorted({label for label, _, _ in permissions}):
        app_config = apps.get_app_config(label)
        models_module = getattr(app_config, "models_module", None)
        app_config.models_module = models_module or True  # historical app configs have none
        try:
            create_permissions(app_config, apps=apps, verbosity=0)
        finally:
            app_config.models_module = models_module
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    group, _ = group_model.objects.get_or_create(name=SUPPORT_GROUP)
    group.permissions.set(
        [
            permission_model.objects.get(content_type__app_label=label, content_type__model=model, codename=codename)
            for label, model, codename in permissions
        ]
    )
    return group
