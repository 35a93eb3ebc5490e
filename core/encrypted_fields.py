"""The registry of encrypted columns, so one command can re-encrypt all of them.

Every column sealed with the keyring registers here (from its app's `AppConfig.ready()`), with
the function that rebuilds the associated data ("purpose") for a row:

    register_encrypted_field(
        "connections.OAuthConnection", "refresh_token_ciphertext",
        purpose=lambda row: f"niyra:v1:oauth_refresh:{row.user_id}:{row.integration}",
        key_id_field="encryption_key_id",
    )

`key_id_field` (optional) is a column holding the key id the row's ciphertexts are sealed with;
`manage.py reencrypt_secrets` uses it to find rows left to do and keeps it up to date. Several
fields of one model may share it: it is only moved to the primary once all of them are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import models


@dataclass(frozen=True, slots=True)
class EncryptedField:
    model_label: str
    field: str
    purpose: Callable[[Any], str]
    key_id_field: str | None = None

    @property
    def model(self) -> type[models.Model]:
        return apps.get_model(self.model_label)

    @property
    def label(self) -> str:
        return f"{self.model_label}.{self.field}"


_REGISTRY: dict[str, EncryptedField] = {}


def register_encrypted_field(
    model_label: str,
    field: str,
    *,
    purpose: Callable[[Any], str],
    key_id_field: str | None = None,
) -> EncryptedField:
    """Register `app_label.Model` `field` (bytes, an envelope from core.crypto). Idempotent."""
    entry = EncryptedField(model_label=model_label, field=field, purpose=purpose, key_id_field=key_id_field)
    _REGISTRY[entry.label] = entry
    return entry


def encrypted_fields() -> list[EncryptedField]:
    return list(_REGISTRY.values())
