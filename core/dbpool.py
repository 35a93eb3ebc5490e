"""Django's connection pool after PostgreSQL lost its connections.

A connection found dead (PostgreSQL restarted, failed over, or dropped it) rarely dies alone:
when a request fails on one, the pool's idle connections are checked at once and the dead ones
replaced, so one request fails rather than one per pooled connection
(tests/faults/test_db_faults.py). The gateway's own pool does the same (routing.gateway.db).
"""

from __future__ import annotations

from typing import Any

from django.db import connections


def check_pools_after_request_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """`got_request_exception` receiver: check every initialised pool's idle connections.

    Django doesn't hand the exception to its receivers (and sends the signal from a worker
    thread for async views), so any unhandled exception triggers the check: they are rare, and
    a check is one cheap round trip per idle connection."""
    for alias in connections:
        # The pool is shared by the alias's connections in every thread (this receiver may run
        # in another thread than the request that failed).
        pool = getattr(connections[alias], "pool", None)
        if pool is not None:
            pool.check()
