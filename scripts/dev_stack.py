"""Run the processes of `Procfile.dev` (web, worker, beat, sandbox) with honcho, for `make run`.

What `honcho start` does, plus what a person at the terminal needs:

* Once the web process answers /readyz and the sandbox answers, the demo login is printed again
  (`demo_setup` printed it before the process output scrolled it away), with where to find it
  later: `var/demo-login.txt` (ignored by git), `make demo-login`.
* Ctrl-C is a normal way to stop: every process is stopped (SIGTERM, then SIGKILL after honcho's
  grace period) and the exit status is 0 when they all ended, instead of honcho's 130.
* The worker of Procfile.dev runs a thread pool: on a stop honcho signals each process's whole
  process group, which with the prefork pool also kills the pool's children in the middle of the
  worker's warm shutdown (ERROR "Process 'ForkPoolWorker-1' exited with signal 15"). Production
  (Procfile, fly.toml) keeps the prefork pool.
* The grace period before SIGKILL is longer than honcho's 5 seconds: on the filesystem broker the
  worker notices a stop between its 2-second polls, then finishes its running tasks.
* Ctrl-C reaches only this process. In a terminal it runs in a process group of its own and
  makes it the terminal's foreground group (as a shell does for a job), so `make` and
  `scripts/local_postgres.py` above it never see the SIGINT: otherwise `make` reports
  "*** Interrupt" and exits 130 however cleanly everything stopped. They still see SIGTERM
  (`make` passes it down) and a hang-up (from the shell).

    python scripts/dev_stack.py [PROCFILE]
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

from honcho import environ
from honcho import manager as honcho_manager
from honcho.manager import Manager
from honcho.printer import Printer

ROOT = Path(__file__).resolve().parent.parent
DEMO_LOGIN_FILE = ROOT / "var" / "demo-login.txt"  # written by `manage.py demo_setup`
READY_TIMEOUT_SECONDS = 180.0
STOP_GRACE_SECONDS = 20  # SIGTERM to SIGKILL


class DevManager(Manager):
    """honcho's manager, remembering whether it is stopping and whether it had to SIGKILL."""

    stopping = False
    forced = False
    hung_up = False

    def terminate(self) -> None:
        self.stopping = True
        super().terminate()

    def kill(self) -> None:
        self.forced = True
        super().kill()


def read_env(path: Path) -> dict[str, str]:
    """`.env` as honcho reads it: its values win over the environment's, for every process."""
    return dict(environ.parse(path.read_text())) if path.is_file() else {}


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback http URL built here
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def ready_banner(web_url: str) -> str:
    login = DEMO_LOGIN_FILE.read_text().strip() if DEMO_LOGIN_FILE.is_file() else "(run `make run` again to create it)"
    return (
        f"niyra: ready on {web_url} (API docs: /api/docs/, admin: /admin/)\n"
        f"niyra: {login}\n"
        f"niyra: the login is kept in {DEMO_LOGIN_FILE.relative_to(ROOT)} (`make demo-login` prints it); "
        "Ctrl-C stops everything\n"
    )


def announce_when_ready(manager: DevManager, env: dict[str, str]) -> None:
    """Print the ready banner once the web process is ready and the sandbox answers."""
    web_url = f"http://127.0.0.1:{env.get('NIYRA_WEB_PORT', '8000')}/"
    sandbox_url = f"http://127.0.0.1:{env.get('NIYRA_SANDBOX_PORT', '8765')}/_sandbox/log"
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline and not manager.stopping:
        if answers(web_url + "readyz") and answers(sandbox_url):
            sys.stdout.write(ready_banner(web_url))
            sys.stdout.flush()
            return
        time.sleep(0.5)
    if not manager.stopping:
        sys.stdout.write(f"niyra: not ready after {READY_TIMEOUT_SECONDS:.0f} s: see {web_url}readyz\n")
        sys.stdout.flush()


@contextmanager
def terminal_foreground() -> Iterator[None]:
    """Be the terminal's foreground process group while running (when this runs in the
    foreground of a terminal), and hand the terminal back afterwards."""
    try:
        fd = sys.stdin.fileno()
        owns_terminal = os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (OSError, ValueError):
        owns_terminal = False
    if not owns_terminal:
        yield
        return
    previous = os.getpgrp()
    # A background process group changing the terminal's foreground group gets SIGTTOU.
    old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
        yield
    finally:
        # The previous group may be gone (make was killed): then there is nothing to hand back to.
        with suppress(OSError):
            os.tcsetpgrp(fd, previous)
        signal.signal(signal.SIGTTOU, old_ttou)


# honcho's exit status when SIGINT or SIGTERM stopped it, and a process's when it ended because it
# was interrupted or terminated: either way, someone asked for the stop.
STOPPED_ON_REQUEST = frozenset({128 + signal.SIGINT, 128 + signal.SIGTERM})


def exit_status(manager: DevManager) -> int:
    """0 when the stop was asked for (Ctrl-C, SIGTERM, a hang-up) and every process ended within
    honcho's grace period; otherwise honcho's status (the first process that ended by itself)."""
    asked = manager.hung_up or manager.returncode in STOPPED_ON_REQUEST
    if asked and not manager.forced:
        return 0
    return int(manager.returncode or 1)


def run(procfile: Path) -> int:
    honcho_manager.KILL_WAIT = STOP_GRACE_SECONDS  # read by Manager.loop at each check
    env = {**os.environ, **read_env(ROOT / ".env")}
    manager = DevManager(Printer(sys.stdout, colour=True, prefix=True))
    for process in environ.expand_processes(environ.parse_procfile(procfile.read_text()).processes, env=env):
        manager.add_process(process.name, process.cmd, quiet=process.quiet, env={**env, **process.env})

    def hang_up(signum: int, frame: FrameType | None) -> None:
        # honcho handles SIGINT and SIGTERM itself (loop() installs its handlers), not SIGHUP.
        manager.hung_up = True
        manager.terminate()

    signal.signal(signal.SIGHUP, hang_up)
    watcher = threading.Thread(target=announce_when_ready, args=(manager, env), daemon=True)
    with terminal_foreground():
        watcher.start()
        manager.loop()
    return exit_status(manager)


if __name__ == "__main__":
    sys.exit(run(ROOT / (sys.argv[1] if len(sys.argv) > 1 else "Procfile.dev")))
