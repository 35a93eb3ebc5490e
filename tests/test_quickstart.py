"""`make run`, the parts a test can check without waiting: what an idle dev stack logs, the login
printed again once everything is up, and the exit status of a stop. The whole run (ready lines,
Ctrl-C in a terminal, status 0, no ERROR line) is scripts/smoke_ctrl_c.py, run by
scripts/smoke_quickstart.sh in CI."""

from __future__ import annotations

import io
import logging
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from celery.app.trace import LOG_FAILURE, LOG_RECEIVED, LOG_SUCCESS
from django.core.management import call_command

from niyra.celery import app
from scripts import dev_stack

ROOT = Path(__file__).resolve().parent.parent
IDLE_TICKS = (
    "core.tasks.heartbeat",
    "credits.tasks.expire_holds",
    "connections.tasks.oauth_refresh_tick",
    "byok.tasks.key_health_tick",
    "credits.tasks.balance_alerts_dispatch",
    "notifications.tasks.notification_email_sweep",
    "credits.tasks.ledger_reconcile",
)
REFRESH = "connections.tasks.oauth_connection_refresh"


def celery_line(logger: str, level: int, msg: str, args: Any) -> None:
    """Log exactly as Celery does (a format string and its arguments), through the configured loggers."""
    logging.getLogger(logger).log(level, msg, args)


def received(name: str) -> None:
    celery_line("celery.worker.strategy", logging.INFO, LOG_RECEIVED, {"id": "t1", "name": name, "args": "()"})


def succeeded(name: str, return_value: str) -> None:
    """A run's line: core.task_observability's, in the words and with the arguments of Celery's."""
    context = {"id": "t1", "name": name, "return_value": return_value, "runtime": 0.01}
    celery_line("niyra.tasks", logging.INFO, LOG_SUCCESS, context)


def sent_by_beat(entry: str, task: str) -> None:
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", entry, task)


@pytest.mark.parametrize("task", IDLE_TICKS)
def test_an_idle_tick_logs_nothing_at_info(task: str, caplog: pytest.LogCaptureFixture) -> None:
    """Idle, beat's ticks would log six lines a minute (sent, received, succeeded, twice)."""
    caplog.set_level(logging.INFO)
    sent_by_beat("tick", task)
    received(task)
    succeeded(task, "None" if task == "core.tasks.heartbeat" else "0")
    assert caplog.records == []


def test_what_an_operator_needs_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    received(REFRESH)  # real work: a refresh
    succeeded(REFRESH, "None")
    succeeded("credits.tasks.expire_holds", "3")  # a tick that did something says how much
    context = {"id": "t1", "name": "core.tasks.heartbeat", "description": "raised unexpected", "exc": "boom"}
    celery_line("celery.app.trace", logging.ERROR, LOG_FAILURE, context)  # a failing tick
    sent_by_beat("other", "some.other.task")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        f"Task {REFRESH}[t1] received",
        f"Task {REFRESH}[t1] succeeded in 0.01s: None",
        "Task credits.tasks.expire_holds[t1] succeeded in 0.01s: 3",
        "Task core.tasks.heartbeat[t1] raised unexpected: boom",
        "Scheduler: Sending due task other (some.other.task)",
    ]


def test_every_beat_entry_is_a_quiet_tick_and_the_dev_processes_log_info() -> None:
    """A new beat entry is quiet when idle too; the worker and beat run at INFO, so the refreshes
    they do stay visible."""
    assert {entry["task"] for entry in app.conf.beat_schedule.values()} == set(IDLE_TICKS)
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile.dev").read_text().splitlines())
    for name in ("worker", "beat"):
        assert "--loglevel INFO" in procfile[name]
    assert "--pool threads" in procfile["worker"]  # see scripts/dev_stack.py: no ERROR on a stop


@pytest.mark.django_db
def test_demo_setup_keeps_the_login_for_later(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("NIYRA_DEMO_PASSWORD", "dev-demo-pass")
    out = io.StringIO()
    call_command("demo_setup", stdout=out)
    assert "Demo login: demo@niyra.local / dev-demo-pass" in out.getvalue()
    login_file = tmp_path / "demo-login.txt"
    assert login_file.read_text() == "Demo login: demo@niyra.local / dev-demo-pass\n"
    assert login_file.stat().st_mode & 0o077 == 0  # the owner's only


def test_the_ready_lines_repeat_the_login_and_say_where_it_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev_stack, "DEMO_LOGIN_FILE", dev_stack.ROOT / "var" / "demo-login-test.txt")
    dev_stack.DEMO_LOGIN_FILE.write_text("Demo login: demo@niyra.local / dev-demo-pass\n")
    try:
        banner = dev_stack.ready_banner("http://127.0.0.1:8000/")
    finally:
        dev_stack.DEMO_LOGIN_FILE.unlink()
    assert re.search(r"^niyra: ready on http://127\.0\.0\.1:8000/", banner)
    assert "niyra: Demo login: demo@niyra.local / dev-demo-pass\n" in banner
    assert "var/demo-login-test.txt" in banner and "make demo-login" in banner
    assert "var/" in (ROOT / ".gitignore").read_text().splitlines()  # the login file stays out of git


def stopped(returncode: int | None, *, forced: bool = False, hung_up: bool = False) -> int:
    manager = dev_stack.DevManager()
    manager.returncode, manager.forced, manager.hung_up = returncode, forced, hung_up
    return dev_stack.exit_status(manager)


def test_a_stop_that_was_asked_for_exits_0() -> None:
    assert stopped(128 + signal.SIGINT) == 0  # Ctrl-C: honcho alone would exit 130 (make: *** Error 130)
    assert stopped(128 + signal.SIGTERM) == 0
    assert stopped(None, hung_up=True) == 0


def test_a_crash_or_a_forced_stop_is_not_a_clean_stop() -> None:
    assert stopped(1) == 1  # a process ended by itself: its status
    assert stopped(128 + signal.SIGINT, forced=True) == 130  # something had to be SIGKILLed
