"""System check: the app refuses to start with a missing or unusable keyring."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

from byok.crypto import Keyring, KeyringError


@register()
def check_keyring(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        Keyring.parse(settings.NIYRA_ENCRYPTION_KEYS)
    except KeyringError as exc:
        return [
            Error(
                f"NIYRA_ENCRYPTION_KEYS is unusable: {exc}",
                hint='Generate one with: python -c "import base64,os;'
                "print('k1:'+base64.b64encode(os.urandom(32)).decode())\"",
                id="byok.E001",
            )
        ]
    return []
