"""The keyring: AES-256-GCM envelopes for every secret column (provider keys, OAuth tokens).

`NIYRA_ENCRYPTION_KEYS` = `kid:base64(32 bytes)[,kid:base64(32 bytes)...]`; the first is primary
(used to encrypt), the rest only decrypt — that is how the master key rotates without downtime.

Envelope (bytes): version (1) | len(kid) (1) | kid (ASCII) | nonce (12) | ciphertext + tag (16).
Associated data = the envelope header + the caller's purpose string, e.g.
`niyra:v1:provider_key:{user_id}:{provider}`, so a ciphertext copied to another row, or with
its key id edited, fails to open. Every failure raises `DecryptionError`: we fail closed.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

ENVELOPE_VERSION = 1
NONCE_BYTES = 12
KEY_BYTES = 32
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class KeyringError(ValueError):
    """The configured keyring is unusable (missing, malformed, short or duplicated keys)."""


class DecryptionError(Exception):
    """A stored secret could not be opened. Never carries plaintext or key material."""


@dataclass(frozen=True)
class Keyring:
    keys: dict[str, AESGCM]
    primary_kid: str

    def __repr__(self) -> str:
        return f"<Keyring primary={self.primary_kid!r} kids={list(self.keys)!r}>"

    @classmethod
    @sensitive_variables()
    def parse(cls, spec: str) -> Keyring:
        entries = [part.strip() for part in spec.split(",") if part.strip()]
        if not entries:
            raise KeyringError("NIYRA_ENCRYPTION_KEYS is empty: set 'kid:base64(32 random bytes)'")
        keys: dict[str, AESGCM] = {}
        seen_material: set[bytes] = set()
        for position, entry in enumerate(entries, start=1):
            kid, sep, encoded = entry.partition(":")
            if not sep or not _KID_RE.match(kid):
                raise KeyringError(f"key #{position} is not 'kid:base64key' (kid: letters, digits, - or _)")
            try:
                material = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(f"key {kid!r} is not valid base64") from None
            if len(material) != KEY_BYTES:
                raise KeyringError(f"key {kid!r} is {len(material)} bytes; AES-256 needs exactly {KEY_BYTES}")
            if kid in keys:
                raise KeyringError(f"key id {kid!r} appears twice")
            if material in seen_material:
                raise KeyringError(f"key {kid!r} repeats the material of another key id")
            seen_material.add(material)
            keys[kid] = AESGCM(material)
        return cls(keys=keys, primary_kid=next(iter(keys)))

    @sensitive_variables("plaintext")
    def encrypt(self, plaintext: str, *, purpose: str) -> bytes:
        kid = self.primary_kid
        header = bytes([ENVELOPE_VERSION, len(kid)]) + kid.encode("ascii")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.keys[kid].encrypt(nonce, plaintext.encode("utf-8"), header + purpose.encode("utf-8"))
        return header + nonce + sealed

    @sensitive_variables()
    def decrypt(self, envelope: bytes | memoryview, *, purpose: str) -> str:
        try:
            envelope = bytes(envelope)
            if envelope[0] != ENVELOPE_VERSION:
                raise DecryptionError("unknown envelope version")
            kid_len = envelope[1]
            header = envelope[: 2 + kid_len]
            kid = header[2:].decode("ascii")
            aead = self.keys.get(kid)
            if aead is None:
                raise DecryptionError(f"no key with id {kid!r} in the keyring")
            nonce = envelope[2 + kid_len : 2 + kid_len + NONCE_BYTES]
            sealed = envelope[2 + kid_len + NONCE_BYTES :]
            return aead.decrypt(nonce, sealed, header + purpose.encode("utf-8")).decode("utf-8")
        except DecryptionError:
            raise
        except (IndexError, UnicodeDecodeError, InvalidTag, ValueError, TypeError):
            raise DecryptionError("ciphertext does not open with this keyring and purpose") from None

    @sensitive_variables()
    def reencrypt(self, envelope: bytes | memoryview, *, purpose: str) -> bytes:
        """The same secret sealed under the primary key (raises DecryptionError like `decrypt`)."""
        return self.encrypt(self.decrypt(envelope, purpose=purpose), purpose=purpose)

    def is_primary(self, envelope: bytes | memoryview) -> bool:
        """True if the envelope is sealed with the primary key (nothing to re-encrypt)."""
        return self.key_id_of(envelope) == self.primary_kid

    def can_open_kid(self, kid: str | None) -> bool:
        """True if the keyring holds key id `kid` (cheap; does not prove the envelope is intact)."""
        return kid is not None and kid in self.keys

    @staticmethod
    def key_id_of(envelope: bytes | memoryview) -> str | None:
        """The key id an envelope was sealed with (None if it is not a valid envelope)."""
        try:
            envelope = bytes(envelope)
            if envelope[0] != ENVELOPE_VERSION:
                return None
            return envelope[2 : 2 + envelope[1]].decode("ascii")
        except (IndexError, UnicodeDecodeError):
            return None


@lru_cache(maxsize=4)
def _keyring_for(spec: str) -> Keyring:
    return Keyring.parse(spec)


def get_keyring() -> Keyring:
    """The process keyring, parsed once per distinct setting value."""
    return _keyring_for(settings.NIYRA_ENCRYPTION_KEYS)


def generate_key_spec(kid: str = "k1") -> str:
    """A fresh `kid:base64` entry, for the quick start and for operators rotating keys."""
    return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"
