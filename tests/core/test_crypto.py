"""The keyring: AES-256-GCM envelopes that fail closed, and the keyring system check."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from django.test import override_settings

from core.checks import check_keyring
from core.crypto import DecryptionError, Keyring, generate_key_spec, get_keyring

PURPOSE = "niyra:v1:provider_key:1:anthropic"


def spec(kid: str) -> str:
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"


def test_round_trip() -> None:
    keyring = Keyring.parse(spec("k1"))
    sealed = keyring.encrypt("sk-ant-secret", purpose=PURPOSE)
    assert keyring.decrypt(sealed, purpose=PURPOSE) == "sk-ant-secret"
    assert b"sk-ant-secret" not in sealed
    assert Keyring.key_id_of(sealed) == "k1"


def test_same_plaintext_twice_gives_different_ciphertexts() -> None:
    keyring = Keyring.parse(spec("k1"))
    first, second = (keyring.encrypt("same", purpose=PURPOSE) for _ in range(2))
    assert first != second
    assert keyring.decrypt(first, purpose=PURPOSE) == keyring.decrypt(second, purpose=PURPOSE) == "same"


@pytest.mark.parametrize("position", [0, 1, 2, 5, 20, -1])
def test_a_flipped_bit_anywhere_fails_closed(position: int) -> None:
    keyring = Keyring.parse(spec("k1"))
    sealed = bytearray(keyring.encrypt("sk-ant-secret", purpose=PURPOSE))
    sealed[position] ^= 0x01
    with pytest.raises(DecryptionError):
        keyring.decrypt(bytes(sealed), purpose=PURPOSE)


def test_a_ciphertext_for_another_row_does_not_open() -> None:
    keyring = Keyring.parse(spec("k1"))
    sealed = keyring.encrypt("sk-ant-secret", purpose="niyra:v1:provider_key:1:anthropic")
    with pytest.raises(DecryptionError):
        keyring.decrypt(sealed, purpose="niyra:v1:provider_key:2:anthropic")
    with pytest.raises(DecryptionError):
        keyring.decrypt(sealed, purpose="niyra:v1:provider_key:1:openai")


@pytest.mark.parametrize("garbage", [b"", b"\x01", b"\x02\x02k1", b"not an envelope at all", b"\x01\x05k1"])
def test_garbage_fails_closed(garbage: bytes) -> None:
    with pytest.raises(DecryptionError):
        Keyring.parse(spec("k1")).decrypt(garbage, purpose=PURPOSE)


def test_an_old_key_id_still_opens_after_the_primary_changes() -> None:
    old = spec("k1")
    sealed = Keyring.parse(old).encrypt("sk-ant-secret", purpose=PURPOSE)
    rotated = Keyring.parse(f"{spec('k2')},{old}")
    assert rotated.primary_kid == "k2"
    assert rotated.decrypt(sealed, purpose=PURPOSE) == "sk-ant-secret"
    assert not rotated.is_primary(sealed)
    moved = rotated.reencrypt(sealed, purpose=PURPOSE)
    assert rotated.is_primary(moved) and rotated.decrypt(moved, purpose=PURPOSE) == "sk-ant-secret"


def test_an_unknown_key_id_fails_closed_with_a_clear_error() -> None:
    sealed = Keyring.parse(spec("gone")).encrypt("sk-ant-secret", purpose=PURPOSE)
    keyring = Keyring.parse(spec("k1"))
    assert not keyring.can_open_kid(Keyring.key_id_of(sealed))
    with pytest.raises(DecryptionError, match="no key with id 'gone'"):
        keyring.decrypt(sealed, purpose=PURPOSE)


def test_the_same_key_id_with_other_material_fails_closed() -> None:
    sealed = Keyring.parse(spec("k1")).encrypt("sk-ant-secret", purpose=PURPOSE)
    with pytest.raises(DecryptionError):
        Keyring.parse(spec("k1")).decrypt(sealed, purpose=PURPOSE)


def test_repr_shows_no_key_material() -> None:
    entry = spec("k1")
    keyring = Keyring.parse(entry)
    assert entry.split(":")[1] not in repr(keyring)
    assert "k1" in repr(keyring)


def test_get_keyring_follows_the_setting() -> None:
    entry = generate_key_spec("fresh")
    with override_settings(NIYRA_ENCRYPTION_KEYS=entry):
        assert get_keyring().primary_kid == "fresh"


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [
        ("", "empty"),
        ("k1", "not 'kid:base64key'"),
        ("k1:" + base64.b64encode(os.urandom(16)).decode(), "16 bytes"),
        ("k1:not base64!", "not valid base64"),
        ("k1:{a},k1:{b}", "appears twice"),
        ("k1:{a},k2:{a}", "repeats the material"),
    ],
)
def test_the_system_check_rejects_unusable_keyrings(keys: str, complaint: str) -> None:
    a, b = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    value = keys.replace("{a}", a).replace("{b}", b)
    with override_settings(NIYRA_ENCRYPTION_KEYS=value):
        messages: list[Any] = check_keyring()
    assert [m.id for m in messages] == ["core.E001"]
    assert complaint in messages[0].msg
    assert a not in messages[0].msg and b not in messages[0].msg


def test_the_system_check_accepts_a_rotation_keyring() -> None:
    with override_settings(NIYRA_ENCRYPTION_KEYS=f"{spec('k2')}, {spec('k1')}"):
        assert check_keyring() == []
