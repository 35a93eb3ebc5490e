"""Reads of provider keys; nothing here writes. Opening a key (`provider_key_plaintext`) is for
the call that uses it: a key that does not open is reported to the caller, which records it
through `byok.services.provider_key_mark_needs_reentry`."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, QuerySet
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from byok.models import KeyCheck, KeyStatus, Provider, ProviderKey
from core.crypto import DecryptionError, get_keyring
from core.errors import KEY_NEEDS_REENTRY, NiyraError


def provider_key_list(*, user: User) -> QuerySet[ProviderKey]:
    return ProviderKey.objects.filter(user=user).order_by("provider")


def provider_key_get(*, user: User, provider: str) -> ProviderKey | None:
    return ProviderKey.objects.filter(user=user, provider=provider).first()


def key_checks_recent(*, provider_key: ProviderKey) -> list[KeyCheck]:
    """The key's short history of checks, newest first (byok.services keeps it short)."""
    return list(KeyCheck.objects.filter(provider_key=provider_key).order_by("-checked_at", "-id"))


def provider_key_ids_due(*, now: datetime, per_provider: int) -> dict[str, list[int]]:
    """The keys whose scheduled check is due, at most `per_provider` of each provider, the most
    overdue first. One query: a UNION of one index range scan per provider (provider_key_due)."""
    due = ProviderKey.objects.filter(next_check_at__lte=now).order_by("next_check_at")
    parts = [
        due.filter(provider=provider).values_list("provider", "pk", "next_check_at")[:per_provider]
        for provider in Provider.values
    ]
    rows = parts[0].union(*parts[1:], all=True) if len(parts) > 1 else parts[0]
    ids: dict[str, list[int]] = {}
    for provider, key_id, _due_at in sorted(rows, key=lambda row: (row[2], row[1])):
        ids.setdefault(provider, []).append(key_id)
    return ids


def provider_key_counts() -> dict[tuple[str, str], int]:
    """How many saved keys there are per (provider, status): one GROUP BY (the health tick's gauge)."""
    rows = ProviderKey.objects.order_by().values_list("provider", "status").annotate(keys=Count("pk"))
    return {(provider, status): keys for provider, status, keys in rows}


def provider_key_effective_status(provider_key: ProviderKey) -> str:
    """The status to show: "needs_reentry" when the keyring no longer holds the key id the
    ciphertext was sealed with (a cheap check: nothing is decrypted to list keys)."""
    if not get_keyring().can_open_kid(provider_key.encryption_key_id):
        return KeyStatus.NEEDS_REENTRY
    return provider_key.status


@sensitive_variables()
def provider_key_plaintext(provider_key: ProviderKey) -> str:
    """Decrypt the key for the call about to use it. The caller drops it when the call ends.

    A ciphertext that does not open (unknown key id, tampered, copied from another row) raises
    `KEY_NEEDS_REENTRY`; the caller records that with `provider_key_mark_needs_reentry`.
    """
    try:
        return get_keyring().decrypt(provider_key.ciphertext, purpose=provider_key.purpose)
    except DecryptionError:
        raise NiyraError(KEY_NEEDS_REENTRY, detail={"provider": provider_key.provider}) from None
