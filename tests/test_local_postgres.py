"""The embedded PostgreSQL of `make run` and `make test` (scripts/local_postgres.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
import pytest

from scripts.local_postgres import DataDirBusy, run, start, start_first_free


def test_start_serves_the_niyra_database_and_one_command_holds_a_data_dir(tmp_path: Path) -> None:
    server = start(tmp_path / "pg")
    try:
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("niyra",)
        with pytest.raises(DataDirBusy):
            start(tmp_path / "pg")
    finally:
        server.stop()

    assert not (tmp_path / "pg" / "postmaster.pid").exists()
    server.stop()  # idempotent


def test_a_busy_data_dir_sends_the_next_command_to_the_next_one(tmp_path: Path) -> None:
    first = start_first_free([tmp_path / "a", tmp_path / "b"])
    try:
        second = start_first_free([tmp_path / "a", tmp_path / "b"])
        try:
            assert (first.data_dir, second.data_dir) == (tmp_path / "a", tmp_path / "b")
            with pytest.raises(DataDirBusy, match="all 2"):
                start_first_free([tmp_path / "a", tmp_path / "b"])
        finally:
            second.stop()
    finally:
        first.stop()


def test_run_gives_the_command_the_database_and_stops_it_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    probe = "import os, psycopg, sys; psycopg.connect(os.environ['DATABASE_URL']).close(); sys.exit(3)"

    status = run([sys.executable, "-c", probe], data_dir=tmp_path / "pg")

    assert status == 3
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
    assert "stopped" in capfd.readouterr().out
