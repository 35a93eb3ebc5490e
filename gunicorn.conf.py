"""gunicorn settings for the `web` process: ASGI through uvicorn workers."""

import os
import shutil
import tempfile
from typing import Any

from uvicorn_worker import UvicornWorker as _UvicornWorker

# Metrics (core.metrics): the workers write their figures to files in PROMETHEUS_MULTIPROC_DIR
# (set before any of them imports prometheus-client: they inherit this environment), and this
# master process serves their sum on METRICS_LISTEN, a private port (fly.toml's [[metrics]]).
# Without a directory from the environment, each server gets a fresh one of its own.
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="niyra-metrics-")
METRICS_LISTEN = os.environ.get("METRICS_LISTEN", "")

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Streaming LLM calls can run for minutes; the provider timeout bounds them, not gunicorn.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
keepalive = 5
accesslog = None  # request logs come from Fly's proxy; ours must never print headers
errorlog = "-"
# gunicorn's control socket (`gunicornc`: reload, resize, stop) is nothing we use: no socket, so
# nothing to reach and no two servers on one host sharing its default path.
control_socket_disable = True

# A deploy stops a machine with SIGTERM (fly.toml's kill_signal: with SIGINT, Fly's default,
# gunicorn's "quick shutdown", the worker keeps serving until gunicorn SIGKILLs it). The master
# stops listening and passes SIGTERM on; each worker lets its calls in flight run for up to
# WEB_GRACE_SECONDS, then uvicorn cancels what is left, the gateway settles it (a stream pays for
# what it relayed, a call not yet answered costs nothing) and the worker exits. gunicorn SIGKILLs
# a worker still alive after graceful_timeout, which would leave its holds open, so that ends 15 s
# after the grace (the settling is bounded by 2 x GATEWAY_DB_POOL_TIMEOUT_SECONDS), and fly.toml's
# kill_timeout (120 s) 5 s after that.
WEB_GRACE_SECONDS = int(os.environ.get("WEB_GRACE_SECONDS", "100"))
graceful_timeout = WEB_GRACE_SECONDS + 15


class UvicornWorker(_UvicornWorker):
    """uvicorn-worker does not pass gunicorn's graceful timeout on to uvicorn; a subclass's
    CONFIG_KWARGS is how it takes uvicorn options (as uvicorn's deployment docs show)."""

    CONFIG_KWARGS = {**_UvicornWorker.CONFIG_KWARGS, "timeout_graceful_shutdown": WEB_GRACE_SECONDS}


worker_class = UvicornWorker


# The hooks import the project when they run: this file is read before gunicorn puts the
# project's directory (--chdir) on the import path.


def on_starting(server: Any) -> None:
    from core.metrics import multiprocess_dir_reset  # noqa: PLC0415

    multiprocess_dir_reset()  # a restarted machine's figures start from zero, like its processes


def when_ready(server: Any) -> None:
    if METRICS_LISTEN:
        from core.metrics import exporter_start  # noqa: PLC0415

        exporter_start(METRICS_LISTEN)


def child_exit(server: Any, worker: Any) -> None:
    from core.metrics import process_dead  # noqa: PLC0415

    process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
