"""`manage.py demo_setup`: the quick start's demo user (Pro plan, some credits), printed.

The login is also written to `var/demo-login.txt` (ignored by git, readable by its owner only):
`make run` prints it again once everything is up (scripts/dev_stack.py) and `make demo-login`
prints it any time. The password is a generated development value from `.env`, never a real
secret, but it stays out of git all the same.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from accounts.services import user_create
from credits.services.accounts import billing_plan_set
from credits.services.ledger import credit_grant

DEMO_EMAIL = "demo@niyra.local"
DEMO_CREDITS_MC = 50_000_000  # 50,000 credits
DEMO_LOGIN_FILENAME = "demo-login.txt"  # in settings.VAR_DIR


class Command(BaseCommand):
    help = "Create (or refresh) the demo user for local development and print its login."

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("NIYRA_DEMO_PASSWORD", "")
        if not password:
            raise CommandError("NIYRA_DEMO_PASSWORD is not set (run `make run`, which writes it to .env)")
        with transaction.atomic():
            user = User.objects.filter(email=DEMO_EMAIL).first()
            if user is None:
                user = user_create(email=DEMO_EMAIL, password=password, is_staff=False)
            elif not user.check_password(password):
                user.set_password(password)
                user.save(update_fields=["password"])
            billing_plan_set(user=user, plan="pro")
            credit_grant(user=user, amount=DEMO_CREDITS_MC, reason="Demo credits", idempotency_key="demo-setup-grant")
        login = f"Demo login: {DEMO_EMAIL} / {password}"
        login_file = settings.VAR_DIR / DEMO_LOGIN_FILENAME
        login_file.touch(mode=0o600)
        login_file.write_text(login + "\n")
        self.stdout.write(self.style.SUCCESS(login))
