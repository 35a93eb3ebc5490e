"""docs/sandbox.md stays true: every example key or client id it shows gets, from the sandbox, the
behaviour the page says; every behaviour word the sandbox knows is on the page; the keys pass
Niyra's format check (so they reach the sandbox); and the BYOK page points to the page in
development only."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from byok.keytext import check_key_format, detect_provider
from sandbox.behaviour import FLAG_WORDS, NORMAL, Behaviour, parse_behaviour
from sandbox.oauth import client_secret_for

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"
# A table row whose first two cells are an example in backticks and its word (or "—" for none).
ROW = re.compile(r"^\|\s*`(?P<example>[^`]+)`\s*\|\s*(?:`(?P<word>[a-z0-9]+)`|—)\s*\|", re.MULTILINE)
_NUMERIC = re.compile(r"(slowchunk|slow|ttl)(\d+)")
_NUMERIC_FIELDS = {"slow": "slow_ms", "slowchunk": "slowchunk_ms", "ttl": "ttl"}


def expected(word: str | None) -> dict[str, Any]:
    """The Behaviour fields the page promises for `word`, spelled out independently of the parser."""
    if word is None:
        return {}
    if word in FLAG_WORDS:
        return {word: True}
    m = _NUMERIC.fullmatch(word)
    if m is None:
        raise AssertionError(f"docs/sandbox.md shows {word!r}, which is no sandbox word")
    return {_NUMERIC_FIELDS[m.group(1)]: int(m.group(2))}


def rows() -> list[tuple[str, str | None]]:
    found = [(m.group("example"), m.group("word")) for m in ROW.finditer(PAGE.read_text())]
    assert len(found) >= 25, "the example tables of docs/sandbox.md were not found"
    return found


@pytest.mark.parametrize(("example", "word"), rows())
def test_each_example_gets_the_behaviour_the_page_says(example: str, word: str | None) -> None:
    behaviour = parse_behaviour(example)
    promised = expected(word)
    for field, value in promised.items():
        assert getattr(behaviour, field) == value, f"{example}: {field} should be {value}"
    if word is None:
        assert behaviour == NORMAL
    # The example carries no word beyond the one in its row, except a lifetime (ttl) that lets
    # the refresh daemon reach an OAuth connection soon.
    rest = replace(behaviour, **{field: getattr(NORMAL, field) for field in {*promised, "ttl"}})
    assert rest == NORMAL, f"{example} carries more than {word!r}: {behaviour}"


@pytest.mark.parametrize(("example", "word"), [(e, w) for e, w in rows() if e.startswith("sk-")])
def test_example_keys_pass_niyras_format_check_so_they_reach_the_sandbox(example: str, word: str | None) -> None:
    provider = detect_provider(example)
    assert provider is not None
    check_key_format(provider=provider, key=example)  # raises KEY_INVALID if Niyra would refuse it


def test_every_behaviour_word_is_documented() -> None:
    words = {w for _, w in rows() if w}
    documented = {_NUMERIC.sub(r"\1", w) for w in words}
    assert FLAG_WORDS | {"slow", "slowchunk", "ttl"} <= documented
    # The error words of the product page, each with an Anthropic and an OpenAI key.
    for provider_prefix in ("sk-ant-", "sk-proj-"):
        shown = {w for e, w in rows() if e.startswith(provider_prefix)}
        assert {"invalid", "ratelimit", "noquota", "overloaded", "hang"} <= shown


def test_precedence_and_combination_are_as_described() -> None:
    assert parse_behaviour("sk-ant-api03-slow500-cut-0000") == Behaviour(slow_ms=500, cut=True)
    both = parse_behaviour("sk-ant-api03-noquota-invalid-0000")
    assert both.api_error() == "invalid"


def test_the_oauth_env_block_uses_the_secret_the_sandbox_accepts() -> None:
    text = PAGE.read_text()
    client_id = re.search(r"^OAUTH_FLAKY_CLIENT_ID=(\S+)$", text, re.MULTILINE)
    secret = re.search(r"^OAUTH_FLAKY_CLIENT_SECRET=(\S+)$", text, re.MULTILINE)
    assert client_id is not None and secret is not None
    assert secret.group(1) == client_secret_for(client_id.group(1))
    assert parse_behaviour(client_id.group(1)).revoked


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False])
def test_byok_page_points_to_the_sandbox_page_in_development_only(debug: bool, pro_user: Any, settings: Any) -> None:
    settings.DEBUG = debug
    client = Client()
    client.force_login(pro_user)
    page = client.get("/settings/byok/").content.decode()
    assert ('data-testid="sandbox-help"' in page) is debug
    assert ("docs/sandbox.md" in page) is debug
