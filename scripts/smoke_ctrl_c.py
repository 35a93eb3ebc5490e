"""Smoke test of stopping `make run` the way a user does: Ctrl-C in its terminal.

Runs `make run` on a pseudo-terminal of its own (as an interactive shell would: a new session
whose foreground process group gets the terminal's SIGINT), waits for the "ready" lines that
repeat the demo login, types Ctrl-C, and checks that everything stopped cleanly: exit status 0,
no ERROR or Traceback line, no make error, the embedded PostgreSQL stopped.

    python scripts/smoke_ctrl_c.py [LOG_FILE]
"""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time
from pathlib import Path

READY = re.compile(rb"niyra: ready .*\n(?:.*\n)*?.*Demo login: demo@niyra\.local / \S+")
BAD = re.compile(rb"^.*(?:\bERROR\b|Traceback|make(?:\[\d+\])?: \*\*\*).*$", re.MULTILINE)
START_TIMEOUT = 240.0
STOP_TIMEOUT = 30.0


def read_until(fd: int, output: bytearray, done: re.Pattern[bytes] | None, timeout: float) -> bool:
    """Append the terminal's output to `output` until `done` matches (or, with None, until EOF)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done is not None and done.search(output):
            return True
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every process on the terminal has closed it
            return done is None
        if not chunk:
            return done is None
        output.extend(chunk)
    return False


def main(log_path: Path | None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: session leader with the pty as its controlling terminal
        os.execvpe("make", ["make", "run"], env)  # noqa: S606, S607 - the quick start as a user types it
    output = bytearray()
    problems: list[str] = []
    try:
        if not read_until(fd, output, READY, START_TIMEOUT):
            problems.append("no 'niyra: ready' line with the demo login after everything started")
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to its foreground process group
        if not read_until(fd, output, None, STOP_TIMEOUT):
            problems.append(f"still running {STOP_TIMEOUT:.0f} s after Ctrl-C")
    finally:
        deadline = time.monotonic() + STOP_TIMEOUT
        status = None
        while time.monotonic() < deadline:
            waited, status = os.waitpid(pid, os.WNOHANG)
            if waited:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, 9)
            status = os.waitpid(pid, 0)[1]
        os.close(fd)
    text = output.replace(b"\r\n", b"\n")
    if log_path is not None:
        log_path.write_bytes(text)
    code = os.waitstatus_to_exitcode(status) if status is not None else None
    if code != 0:
        problems.append(f"`make run` ended with status {code} after Ctrl-C, not 0")
    problems.extend(f"unexpected line: {line.decode(errors='replace').strip()}" for line in BAD.findall(text))
    if b"embedded PostgreSQL in " in text and not re.search(rb"embedded PostgreSQL in \S+ stopped", text):
        problems.append("the embedded PostgreSQL was not reported stopped")
    if problems:
        sys.stdout.write(text.decode(errors="replace"))
        sys.stdout.write("".join(f"Ctrl-C smoke test failed: {p}\n" for p in problems))
        return 1
    sys.stdout.write(
        "Ctrl-C smoke test OK: ready line repeats the demo login; Ctrl-C stops everything, status 0, no ERROR\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
