"""What people paste: normalised, format-checked, and shown only as a hint."""

from __future__ import annotations

import pytest

from byok.keytext import check_key_format, key_fingerprint, key_hint, normalise_key
from core import errors
from providers import Provider

ANTHROPIC = "sk-ant-api03-" + "A1b2" * 10 + "AbCd"
OPENAI = "sk-proj-" + "Z9y8" * 10 + "WxYz"


@pytest.mark.parametrize(
    "pasted",
    [
        ANTHROPIC,
        f"  {ANTHROPIC}  ",
        f"{ANTHROPIC}\n",
        f'"{ANTHROPIC}"',
        f"'{ANTHROPIC}'\r\n",
        f'  "{ANTHROPIC}"\n',
        f"\u201c{ANTHROPIC}\u201d",
        f"`{ANTHROPIC}`",
    ],
)
def test_normalise_strips_whitespace_quotes_and_trailing_newlines(pasted: str) -> None:
    assert normalise_key(pasted) == ANTHROPIC


@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("anthropic", ANTHROPIC),
        ("openai", OPENAI),
        ("openai", "sk-" + "x" * 48),
        ("openai", "sk-svcacct-" + "x" * 40),
    ],
)
def test_accepted_formats(provider: str, key: str) -> None:
    check_key_format(provider=provider, key=key)


@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("anthropic", "ant-api03-" + "x" * 40),
        ("anthropic", "sk-ant-short"),
        ("anthropic", "sk-ant-api03-has space inside-" + "x" * 20),
        ("anthropic", "sk-ant-" + "x" * 600),
        ("openai", "pk-" + "x" * 40),
        ("openai", "sk-" + "x" * 10),
        ("openai", "Bearer sk-proj-" + "x" * 40),
    ],
)
def test_malformed_keys_are_key_invalid(provider: str, key: str) -> None:
    with pytest.raises(errors.NiyraError) as caught:
        check_key_format(provider=provider, key=key)
    assert caught.value.spec is errors.KEY_INVALID
    assert "Paste it without quotes" in caught.value.message


def test_an_anthropic_key_pasted_for_openai_names_anthropic() -> None:
    with pytest.raises(errors.NiyraError) as caught:
        check_key_format(provider="openai", key=ANTHROPIC)
    assert caught.value.spec is errors.KEY_WRONG_PROVIDER
    assert "Anthropic key" in caught.value.message
    assert caught.value.detail == {"provider": "openai", "key_provider": "anthropic"}


def test_an_openai_key_pasted_for_anthropic_names_openai() -> None:
    with pytest.raises(errors.NiyraError) as caught:
        check_key_format(provider="anthropic", key=OPENAI)
    assert caught.value.spec is errors.KEY_WRONG_PROVIDER
    assert "OpenAI key" in caught.value.message


def test_format_errors_never_quote_the_key() -> None:
    for provider, key in (("openai", ANTHROPIC), ("anthropic", "sk-ant-" + "q" * 600)):
        with pytest.raises(errors.NiyraError) as caught:
            check_key_format(provider=provider, key=key)
        assert key[:-4] not in str(caught.value.as_dict()) and key[8:20] not in str(caught.value.as_dict())


def test_hint_is_prefix_and_last_four() -> None:
    assert key_hint(provider="anthropic", key=ANTHROPIC) == "sk-ant-…AbCd"
    assert key_hint(provider="openai", key=OPENAI) == "sk-proj-…WxYz"
    assert key_hint(provider="openai", key="sk-" + "x" * 44 + "1234") == "sk-…1234"


def test_fingerprint_tells_keys_apart_without_revealing_them() -> None:
    assert key_fingerprint(ANTHROPIC) == key_fingerprint(ANTHROPIC)
    assert key_fingerprint(ANTHROPIC) != key_fingerprint(OPENAI)
    assert len(key_fingerprint(ANTHROPIC)) == 16
    assert key_fingerprint(ANTHROPIC) not in ANTHROPIC


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_no_key_at_all_is_a_missing_key_not_an_invalid_one(provider: str) -> None:
    """An empty key (what whitespace or quotes alone normalise to) was key_invalid."""
    with pytest.raises(errors.NiyraError) as caught:
        check_key_format(provider=provider, key=normalise_key(' "" \n'))
    assert caught.value.spec is errors.INVALID_INPUT
    assert caught.value.message == f"Paste your {Provider(provider).label} key into the field."
    assert caught.value.detail == {"key": [caught.value.message]}
