"""`manage.py support_group [--add EMAIL]`: put the Support group back to exactly its permissions
(accounts.support), print them, and optionally make a user support staff (staff + the group)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts.models import User
from accounts.services import audit_event_record
from accounts.support import SUPPORT_GROUP, SUPPORT_PERMISSIONS, support_group_sync


class Command(BaseCommand):
    help = "Sync the Support group's permissions; --add EMAIL makes that user support staff."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--add", metavar="EMAIL", help="make this user staff and a member of the group")

    def handle(self, *args: Any, add: str | None, **options: Any) -> None:
        with transaction.atomic():
            group = support_group_sync()
            if add:
                user = User.objects.select_for_update().filter(email__iexact=add.strip()).first()
                if user is None:
                    raise CommandError(f"no user with email {add!r}")
                if user.is_superuser:
                    raise CommandError(f"{user.email} is a superuser; support staff are not")
                if not user.is_staff:
                    user.is_staff = True
                    user.save(update_fields=["is_staff"])
                if not user.groups.filter(pk=group.pk).exists():
                    user.groups.add(group)
                    audit_event_record(actor=None, subject=user, event="support.member_added", target=SUPPORT_GROUP)
                self.stdout.write(f"{user.email} is support staff (staff, group {SUPPORT_GROUP!r}).")
        self.stdout.write(f"Group {SUPPORT_GROUP!r}: " + ", ".join(f"{a}.{c}" for a, _, c in SUPPORT_PERMISSIONS))
