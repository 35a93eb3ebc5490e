"""Pasted key text: normalise, check the format, and derive what may be shown (hint, fingerprint).

Pure functions, no I/O. Every function that holds a key hides its locals from Django's error
reports; none of them puts the key (or any part beyond the last four characters) in an error.
"""

from __future__ import annotations

import re

from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables

from core.errors import INVALID_INPUT, KEY_INVALID, KEY_MISSING_MESSAGE, KEY_WRONG_PROVIDER, NiyraError
from providers import Provider

ANTHROPIC_PREFIX = "sk-ant-"
OPENAI_PREFIXES = ("sk-proj-", "sk-")
MIN_KEY_LENGTH = 20
MAX_KEY_LENGTH = 512
HINT_TAIL = 4

# What people paste around a key: whitespace and newlines, straight, typographic and back quotes.
_WRAPPING = " \t\r\n\v\f\u00a0\u200b\ufeff\"'`\u2018\u2019\u201c\u201d"
# A character that `normalise_key` keeps (a paste without one is no key at all), as a regex class.
NON_WRAPPING_CHARACTER = "[^\\u0000" + "".join(f"\\u{ord(c):04x}" for c in _WRAPPING) + "]"
_KEY_CHARS = re.compile(r"^[A-Za-z0-9_\-]+$")
_FINGERPRINT_SALT = "niyra.byok.provider_key.fingerprint"


@sensitive_variables()
def normalise_key(raw: str) -> str:
    """Strip surrounding whitespace, quotes and trailing newlines (repeatedly: `"sk-…"\\n`)."""
    text = raw
    while True:
        stripped = text.strip(_WRAPPING)
        if stripped == text:
            return stripped
        text = stripped


def detect_provider(key: str) -> str | None:
    """The provider a key's prefix belongs to, if any."""
    if key.startswith(ANTHROPIC_PREFIX):
        return Provider.ANTHROPIC
    if key.startswith(OPENAI_PREFIXES):
        return Provider.OPENAI
    return None


@sensitive_variables()
def check_key_format(*, provider: str, key: str) -> None:
    """Raise `INVALID_INPUT` for no key at all, `KEY_INVALID` or `KEY_WRONG_PROVIDER` (naming the
    right provider), else return. `key` is normalised: whitespace or quotes alone leave it empty."""
    if not key:
        message = KEY_MISSING_MESSAGE.format(provider=Provider(provider).label)
        raise NiyraError(INVALID_INPUT, message=message, detail={"key": [message]})
    owner = detect_provider(key)
    if owner is not None and owner != provider:
        raise NiyraError(
            KEY_WRONG_PROVIDER,
            message=(
                f"That looks like an {Provider(owner).label} key. "
                f"Add it under {Provider(owner).label}, or paste your "
                f"{Provider(provider).label} key here."
            ),
            detail={"provider": provider, "key_provider": owner},
        )
    if owner is None or not (MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH) or not _KEY_CHARS.match(key):
        raise NiyraError(KEY_INVALID, detail={"provider": provider})


@sensitive_variables()
def key_hint(*, provider: str, key: str) -> str:
    """`sk-ant-…AbCd`: the prefix and the last four characters."""
    if provider == Provider.ANTHROPIC:
        prefix = ANTHROPIC_PREFIX
    else:
        prefix = next(p for p in OPENAI_PREFIXES if key.startswith(p))
    return f"{prefix}…{key[-HINT_TAIL:]}"


@sensitive_variables()
def key_fingerprint(key: str) -> str:
    """A keyed hash (HMAC-SHA256 under SECRET_KEY, 64 bits shown) that tells two keys apart.

    Keyed so that a database dump cannot be used to confirm a guessed or leaked key.
    """
    return salted_hmac(_FINGERPRINT_SALT, key, algorithm="sha256").hexdigest()[:16]
