"""fly.toml, the Procfiles and the Dockerfile name modules that really exist."""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import tomllib
from pathlib import Path
from unittest import mock

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


def gunicorn_config() -> dict[str, object]:
    """The config file's settings, read as gunicorn reads it (it sets PROMETHEUS_MULTIPROC_DIR
    for its workers: not for this process, whose later subprocesses inherit its environment)."""
    namespace: dict[str, object] = {}
    with mock.patch.dict(os.environ):
        exec((ROOT / "gunicorn.conf.py").read_text(), namespace)  # noqa: S102 - our own config file
        if namespace["_OWN_METRICS_DIR"]:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return namespace


def test_gunicorn_worker_class_is_a_uvicorn_worker() -> None:
    from uvicorn_worker import UvicornWorker

    worker_class = gunicorn_config()["worker_class"]

    assert isinstance(worker_class, type) and issubclass(worker_class, UvicornWorker)


def test_fly_stops_a_web_machine_gracefully_within_its_kill_timeout() -> None:
    """Fly's kill signal is gunicorn's graceful stop (SIGINT is its quick one), and its SIGKILL
    comes only after uvicorn's grace (which cuts and settles what is left) and gunicorn's own
    graceful_timeout (which SIGKILLs workers) have both run out."""
    config = gunicorn_config()
    grace = config["WEB_GRACE_SECONDS"]
    uvicorn_options = config["worker_class"].CONFIG_KWARGS  # type: ignore[attr-defined]

    assert FLY["kill_signal"] == "SIGTERM"
    assert uvicorn_options["timeout_graceful_shutdown"] == grace
    assert isinstance(grace, int) and grace < config["graceful_timeout"]  # type: ignore[operator]
    assert int(str(FLY["kill_timeout"]).removesuffix("s")) > config["graceful_timeout"]  # type: ignore[operator]


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


def test_fly_restarts_the_worker_and_beat_whenever_they_exit_and_shows_the_worker_liveness() -> None:
    """Fly restarts a machine when its process exits, never for a failing check: the worker's
    watchdog (core.liveness) and beat (Redis gone) exit to be restarted, under `always` (the
    default on-failure gives up after ten tries). The check probes the watchdog's own port."""
    policies = {process: entry["policy"] for entry in FLY["restart"] for process in entry["processes"]}
    check = FLY["checks"]["worker_livez"]

    assert policies == {"worker": "always", "beat": "always"}
    assert check["processes"] == ["worker"] and check["path"] == "/livez"
    assert FLY["env"]["WORKER_LIVENESS_LISTEN"].rpartition(":")[2] == str(check["port"])


def test_fly_scrapes_the_metrics_of_web_and_worker_on_a_private_port() -> None:
    """The metrics are declared for Fly's Prometheus on the port the processes serve them on
    (METRICS_LISTEN), which is not the public service's: Fly's proxy never routes to it."""
    (declared,) = FLY["metrics"]
    listen_host, _, listen_port = FLY["env"]["METRICS_LISTEN"].rpartition(":")

    assert declared["path"] == "/metrics" and sorted(declared["processes"]) == ["web", "worker"]
    assert str(declared["port"]) == listen_port and listen_host == "0.0.0.0"  # noqa: S104 (Fly scrapes it over the private network)
    assert declared["port"] != FLY["http_service"]["internal_port"]
    assert declared["port"] != FLY["checks"]["worker_livez"]["port"]
    assert FLY["env"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/")
