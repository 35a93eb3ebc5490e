"""`manage.py reconcile_ledger`: prove the ledger and the account rows agree.

For every account: balance == sum of its entries, reserved == sum of its open holds, the latest
entry's balance_after == balance, and balance - reserved >= 0. Prints each mismatch and exits 1
if there is any, so it can gate a deploy or a benchmark run.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from credits.models import BillingAccount
from credits.selectors import ledger_mismatches


class Command(BaseCommand):
    help = "Check every billing account against its ledger entries and open holds; exit 1 on any mismatch."

    def handle(self, *args: Any, **options: Any) -> None:
        mismatches = ledger_mismatches()
        for mismatch in mismatches:
            problems = "; ".join(mismatch.problems)
            self.stdout.write(f"account {mismatch.account_id} ({mismatch.email}): {problems}")
        checked = BillingAccount.objects.count()
        if mismatches:
            raise CommandError(f"{len(mismatches)} of {checked} account(s) disagree with the ledger.", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"Ledger reconciled: {checked} account(s), no mismatches."))
