"""Re-encrypt every registered secret column under the keyring's primary key.

Part of rotating the master key without downtime (docs/key-rotation.md). Safe while the app
serves traffic: each batch is a short transaction that row-locks its rows with
`SELECT ... FOR UPDATE SKIP LOCKED` (a row a request is writing right now is skipped and retried
in a later pass), re-reads the ciphertext under the lock, and writes the new one. Resumable:
only rows not yet under the primary key are touched, so an interrupted run just runs again.
Generic over every column registered in `core.encrypted_fields` (each app registers its own);
the audit row goes through `core.audit`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models, transaction

from core.audit import audit_record
from core.crypto import DecryptionError, Keyring, get_keyring
from core.encrypted_fields import EncryptedField, encrypted_fields

NOT_AN_ENVELOPE = "(not an envelope)"
LOCKED_RETRY_PAUSE_SECONDS = 0.5


@dataclass
class PassStats:
    reencrypted: int = 0
    locked: int = 0
    unreadable: int = 0


def key_id_counts(entry: EncryptedField, keyring: Keyring) -> Counter[str]:
    """How many non-empty values of `entry` are sealed with each key id."""
    counts: Counter[str] = Counter()
    values = entry.model._default_manager.exclude(**{f"{entry.field}__isnull": True})
    for value in values.values_list(entry.field, flat=True).iterator(chunk_size=2000):
        if value is None or len(value) == 0:
            continue
        counts[Keyring.key_id_of(value) or NOT_AN_ENVELOPE] += 1
    return counts


def reencrypt_model(
    model: type[models.Model], entries: list[EncryptedField], keyring: Keyring, *, batch_size: int
) -> PassStats:
    """One pass over `model`: every row with a registered field not under the primary key."""
    stats = PassStats()
    primary = keyring.primary_kid
    kid_fields = {entry.key_id_field for entry in entries if entry.key_id_field}
    shared = {entry.key_id_field for entry in entries}
    candidates = model._default_manager.order_by("pk")
    if len(shared) == 1 and None not in shared:
        # Every field records its key id in one column: an index into the work left (the
        # envelopes stay the truth for what is re-encrypted).
        candidates = candidates.exclude(**{str(next(iter(shared))): primary})
    last_pk: Any = None
    while True:
        page = candidates if last_pk is None else candidates.filter(pk__gt=last_pk)
        pks = list(page.values_list("pk", flat=True)[:batch_size])
        if not pks:
            return stats
        last_pk = pks[-1]
        with transaction.atomic():
            locked = model._default_manager.select_for_update(skip_locked=True).filter(pk__in=pks)
            rows = list(locked.order_by("pk"))
            stats.locked += len(pks) - len(rows)
            for row in rows:
                updates: dict[str, Any] = {}
                behind: set[str] = set()  # key id columns with a value still not under the primary
                for entry in entries:
                    value = getattr(row, entry.field)
                    if value is None or len(value) == 0 or keyring.is_primary(value):
                        continue
                    try:
                        updates[entry.field] = keyring.reencrypt(value, purpose=entry.purpose(row))
                    except DecryptionError:
                        stats.unreadable += 1
                        if entry.key_id_field:
                            behind.add(entry.key_id_field)
                if updates:
                    stats.reencrypted += 1
                for kid_field in kid_fields - behind:
                    if getattr(row, kid_field) != primary:
                        updates[kid_field] = primary
                if updates:
                    # A maintenance rewrite, not a change of the secret: no save(), no auto_now bump.
                    model._default_manager.filter(pk=row.pk).update(**updates)


class Command(BaseCommand):
    help = "Re-encrypt every encrypted column under the primary key of NIYRA_ENCRYPTION_KEYS."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per transaction (default 500).")
        parser.add_argument(
            "--max-passes",
            type=int,
            default=5,
            help="Passes over rows skipped because a request held their lock (default 5).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Only print the counts per key id.")

    def handle(self, *args: Any, batch_size: int, max_passes: int, dry_run: bool, **options: Any) -> None:
        if batch_size < 1 or max_passes < 1:
            raise CommandError("--batch-size and --max-passes must be at least 1")
        keyring = get_keyring()
        others = [kid for kid in keyring.keys if kid != keyring.primary_kid]
        self.stdout.write(f"Keyring: primary {keyring.primary_kid!r}; also opens {others or 'nothing else'}")
        entries = encrypted_fields()
        self._print_counts("before", entries, keyring)
        if dry_run:
            return

        by_model: dict[type[models.Model], list[EncryptedField]] = defaultdict(list)
        for entry in entries:
            by_model[entry.model].append(entry)
        summary: dict[str, dict[str, int]] = {}
        still_locked = 0
        for model, model_entries in by_model.items():
            total = PassStats()
            for attempt in range(max_passes):
                stats = reencrypt_model(model, model_entries, keyring, batch_size=batch_size)
                total.reencrypted += stats.reencrypted
                total.unreadable = stats.unreadable  # the same rows come back every pass
                total.locked = stats.locked
                if stats.locked == 0:
                    break
                if attempt + 1 < max_passes:
                    time.sleep(LOCKED_RETRY_PAUSE_SECONDS)
            label = model._meta.label
            summary[label] = {"reencrypted": total.reencrypted, "locked": total.locked, "unreadable": total.unreadable}
            still_locked += total.locked
            self.stdout.write(
                f"{label}: re-encrypted {total.reencrypted} row(s); "
                f"{total.locked} skipped (locked); {total.unreadable} unreadable"
            )
            if total.unreadable:
                self.stderr.write(
                    f"{label}: {total.unreadable} value(s) do not open with this keyring (unknown key id or "
                    "damaged); they were left as they are and show as 'needs re-entry'."
                )
        remaining = self._print_counts("after", entries, keyring)
        with transaction.atomic():
            audit_record(
                event="secrets.reencrypted",
                target=keyring.primary_kid,
                outcome="ok" if not still_locked else "incomplete",
                details={"models": summary},
            )
        if still_locked:
            raise CommandError(
                f"{still_locked} row(s) were locked by requests in every pass; run the command again "
                "before removing an old key from NIYRA_ENCRYPTION_KEYS."
            )
        if remaining:
            self.stderr.write(
                "Rows remain under "
                + ", ".join(f"{kid!r} ({n})" for kid, n in sorted(remaining.items()))
                + ": they could not be opened; an old key id can be dropped only if you accept losing them."
            )

    def _print_counts(self, when: str, entries: list[EncryptedField], keyring: Keyring) -> Counter[str]:
        """Print counts per key id; return the counts of readable-looking rows not under the primary."""
        not_primary: Counter[str] = Counter()
        for entry in entries:
            counts = key_id_counts(entry, keyring)
            shown = ", ".join(
                f"{kid}={n}" + ("" if kid == NOT_AN_ENVELOPE or keyring.can_open_kid(kid) else " (not in keyring)")
                for kid, n in sorted(counts.items())
            )
            self.stdout.write(f"{entry.label} {when}: {shown or 'no values'}")
            for kid, n in counts.items():
                if kid != keyring.primary_kid:
                    not_primary[kid] += n
        return not_primary
