"""Start-up configuration: missing secrets and bad settings get a one-line explanation."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "k1:" + base64.b64encode(os.urandom(32)).decode()


def run_manage(*args: str, settings: str = "production", **env: str) -> subprocess.CompletedProcess[str]:
    """manage.py with `niyra.settings.<settings>` in a clean environment (no developer `.env`)."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("NIYRA_", "DJANGO_", "DATABASE_", "REDIS_", "SECURE_"))
    }
    clean |= {"DJANGO_SETTINGS_MODULE": f"niyra.settings.{settings}", "NIYRA_READ_DOTENV": "0"} | env
    for name in (
        "SECRET_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "ALLOWED_HOSTS",
        "DEBUG",
        "CELERY_BROKER_URL",
        "EMAIL_URL",
    ):
        if name not in env:
            clean.pop(name, None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def test_production_start_names_every_missing_secret_in_one_line() -> None:
    result = run_manage("check", SECRET_KEY="x" * 50)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    for name in (
        "NIYRA_ENCRYPTION_KEYS",
        "DATABASE_URL",
        "REDIS_URL or CELERY_BROKER_URL",
        "ANTHROPIC_API_KEY",
        "EMAIL_URL",
        "NIYRA_PUBLIC_URL",
    ):
        assert name in lines[0]
    assert "SECRET_KEY" not in lines[0]


def test_malformed_database_url_is_one_line() -> None:
    result = run_manage("check", settings="development", NIYRA_ENCRYPTION_KEYS=GOOD_KEY, DATABASE_URL="nosuchdb://x")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("niyra: configuration error:")


@pytest.mark.parametrize("settings", ["development", "production"])
def test_a_database_other_than_postgresql_is_refused_in_one_line(settings: str) -> None:
    result = run_manage("check", settings=settings, **(PRODUCTION_ENV | {"DATABASE_URL": "sqlite:///var/x.sqlite3"}))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "niyra: configuration error: DATABASE_URL must be a postgres:// URL (Niyra runs on PostgreSQL only)"
    ]


def test_production_settings_refuse_debug() -> None:
    result = run_manage("check", **(PRODUCTION_ENV | {"DEBUG": "True"}))

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "production settings never run with DEBUG" in result.stderr


def test_development_settings_default_to_the_embedded_postgresql_of_make_run() -> None:
    result = run_manage("diffsettings", settings="development", NIYRA_ENCRYPTION_KEYS=GOOD_KEY)

    assert result.returncode == 0, result.stderr
    assert str(ROOT / "var" / "postgres") in next(line for line in result.stdout.splitlines() if "DATABASES" in line)
    assert "DEBUG = True" in result.stdout


def test_unreachable_database_is_one_line() -> None:
    result = run_manage(
        "migrate",
        "--check",
        settings="development",
        NIYRA_ENCRYPTION_KEYS=GOOD_KEY,
        DATABASE_URL="postgres://nobody@127.0.0.1:1/none",
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "check DATABASE_URL" in result.stderr


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [
        ("", "empty"),
        ("k1:" + base64.b64encode(b"short").decode(), "exactly 32"),
        ("no-colon-here", "kid:base64key"),
        ("k1:%%%notbase64", "not valid base64"),
        (f"{GOOD_KEY},{GOOD_KEY}", "appears twice"),
    ],
)
def test_system_check_rejects_unusable_keyring(keys: str, complaint: str) -> None:
    result = run_manage("check", settings="development", NIYRA_ENCRYPTION_KEYS=keys)

    assert result.returncode != 0
    assert "core.E001" in result.stderr
    assert complaint in result.stderr


def test_development_defaults_start_with_only_a_keyring() -> None:
    result = run_manage("check", settings="development", NIYRA_ENCRYPTION_KEYS=GOOD_KEY)

    assert result.returncode == 0, result.stderr


PRODUCTION_ENV = {
    "DEBUG": "False",
    "SECRET_KEY": base64.b64encode(os.urandom(48)).decode(),
    "NIYRA_ENCRYPTION_KEYS": GOOD_KEY,
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/niyra",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
    "ALLOWED_HOSTS": "niyra.fly.dev",
    "ANTHROPIC_API_KEY": "sk-ant-prod-placeholder",
    "OPENAI_API_KEY": "sk-proj-prod-placeholder",
    "EMAIL_URL": "smtp+tls://niyra:placeholder@smtp.example.com:587",
    "NIYRA_PUBLIC_URL": "https://niyra.fly.dev",
}


def test_deploy_checks_are_clean_with_production_settings() -> None:
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION_ENV)

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_openapi_schema_is_valid_and_warning_free(tmp_path: Path) -> None:
    out = tmp_path / "schema.yaml"

    result = run_manage("spectacular", "--validate", "--fail-on-warn", "--file", str(out), **PRODUCTION_ENV)

    assert result.returncode == 0, result.stderr
    assert "bearerAuth" in out.read_text()
