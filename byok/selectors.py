"""Reads of provider keys; nothing here writes. Opening a key (`provider_key_plaintext`) is for
the call that uses it: a key that does not open is reported to the caller, which records it
through `byok.services.provider_key_mark_needs_reentry`."""

from __future__ import annotations

from django.db.models import QuerySet
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from byok.models import KeyStatus, ProviderKey
from core.crypto import DecryptionError, get_keyring
from core.errors import KEY_NEEDS_REENTRY, NiyraError


def provider_key_list(*, user: User) -> QuerySet[ProviderKey]:
    return ProviderKey.objects.filter(user=user).order_by("provider")


def provider_key_get(*, user: User, provider: str) -> ProviderKey | None:
    return ProviderKey.objects.filter(user=user, provider=provider).first()


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
