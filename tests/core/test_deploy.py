"""fly.toml, the Procfiles and the Dockerfile name modules that really exist."""

from __future__ import annotations

import importlib
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLY = tomllib.loads((ROOT / "fly.toml").read_text())


def module_of(command: str) -> str:
    argv = shlex.split(command)
    while "=" in argv[0]:  # leading NAME=value environment assignments
        argv = argv[1:]
    program = Path(argv[0]).name
    if program.startswith("python") and argv[1] == "-m":
        return argv[2]
    if program == "gunicorn":
        return argv[1].split(":")[0]
    if program == "celery":
        return argv[argv.index("-A") + 1]
    if program == "uvicorn":
        return argv[1].split(":")[0]
    raise AssertionError(f"unexpected program {program}")


def test_fly_has_web_worker_and_a_single_beat() -> None:
    processes = FLY["processes"]

    assert set(processes) == {"web", "worker", "beat"}
    assert "uvicorn" in (ROOT / "gunicorn.conf.py").read_text()
    assert "worker" in shlex.split(processes["worker"])
    assert "beat" in shlex.split(processes["beat"])
    assert FLY["http_service"]["processes"] == ["web"]
    assert any(check["path"] == "/healthz" for check in FLY["http_service"]["checks"])
    assert "migrate" in FLY["deploy"]["release_command"]


@pytest.mark.parametrize("process", ["web", "worker", "beat"])
def test_fly_process_commands_name_real_modules(process: str) -> None:
    module = importlib.import_module(module_of(FLY["processes"][process]))

    if process == "web":
        assert callable(module.application)
    else:
        from celery import Celery

        assert isinstance(module.celery_app, Celery)


def test_gunicorn_worker_class_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec((ROOT / "gunicorn.conf.py").read_text(), namespace)  # noqa: S102 - our own config file
    module, _, cls = str(namespace["worker_class"]).rpartition(".")

    assert hasattr(importlib.import_module(module), cls)


def test_fly_env_holds_no_secrets() -> None:
    env = FLY["env"]

    for secret in (
        "SECRET_KEY",
        "NIYRA_ENCRYPTION_KEYS",
        "DATABASE_URL",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "EMAIL_URL",
    ):
        assert secret not in env
    assert env["DEBUG"] == "False"


@pytest.mark.parametrize("procfile", ["Procfile", "Procfile.dev"])
def test_procfile_commands_name_real_modules(procfile: str) -> None:
    for line in (ROOT / procfile).read_text().splitlines():
        name, _, command = line.partition(":")
        if "manage.py" in command:
            continue
        if name == "release":
            continue
        importlib.import_module(module_of(command.strip()))


def test_docker_collects_static_files_with_production_storage() -> None:
    """With DEBUG on, collectstatic would skip the manifest the production storage needs, and
    every page using {% static %} would fail at runtime."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    step = next(block for block in dockerfile.split("\nRUN ") if "manage.py collectstatic" in block)

    assert "DEBUG=False" in step
    assert "DEBUG=True" not in step


def test_each_entry_point_names_its_settings_module() -> None:
    """Deployed processes (the image's web, worker, beat and release) run production settings;
    `make run` and its processes run development; manage.py alone defaults to development."""
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert "DJANGO_SETTINGS_MODULE=niyra.settings.production" in dockerfile
    for entry_point in ("niyra/asgi.py", "niyra/wsgi.py", "niyra/celery.py"):
        assert '"DJANGO_SETTINGS_MODULE", "niyra.settings.production"' in (ROOT / entry_point).read_text()
    assert '"DJANGO_SETTINGS_MODULE", "niyra.settings.development"' in (ROOT / "manage.py").read_text()
    assert "--settings niyra.settings.production" in (ROOT / "Procfile").read_text()
    for line in (ROOT / "Procfile.dev").read_text().splitlines():
        if "niyra" in line:
            assert line.split(":", 1)[1].split()[0] == "DJANGO_SETTINGS_MODULE=niyra.settings.development"
    assert "export DJANGO_SETTINGS_MODULE = niyra.settings.development" in (ROOT / "Makefile").read_text()
