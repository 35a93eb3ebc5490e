"""The keyring checks: a system check (start-up refuses a missing or unusable keyring) and the
`/readyz` check. Both are registered by `CoreConfig.ready()`."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error

from core.crypto import Keyring, KeyringError, get_keyring
from core.health import ReadinessError


def check_keyring(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        Keyring.parse(settings.NIYRA_ENCRYPTION_KEYS)
    except KeyringError as exc:
        return [
            Error(
                f"NIYRA_ENCRYPTION_KEYS is unusable: {exc}",
                hint='Generate one with: python -c "import base64,os;'
                "print('k1:'+base64.b64encode(os.urandom(32)).decode())\"",
                id="core.E001",
            )
        ]
    return []


def keyring_ready() -> None:
    """`/readyz`: the keyring parses (the reason is never logged: it is about secret material)."""
    try:
        get_keyring()
    except KeyringError:
        raise ReadinessError from None
