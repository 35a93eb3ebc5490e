"""Run the provider sandbox: in a background thread (tests) or in the foreground (dev stack)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web

from .app import build_app
from .oauth import DEFAULT_ACCESS_TOKEN_TTL, DEFAULT_CODE_TTL, OAuthState
from .promptcache import PromptCache
from .requestlog import RequestLog

__all__ = ["SandboxServer", "is_loopback_host"]

_START_TIMEOUT = 15.0
_SHUTDOWN_TIMEOUT = 0.25


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SandboxServer:
    """The sandbox HTTP server bound to a loopback address.

    ``start()`` serves from a daemon thread with its own event loop and returns once listening
    (``port=0`` picks a free port); ``stop()`` shuts it down; usable as a context manager.
    ``serve_forever()`` serves on the calling thread until SIGINT/SIGTERM.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL,
        code_ttl: float = DEFAULT_CODE_TTL,
        log_maxlen: int = 100_000,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"the provider sandbox only binds to loopback addresses, not {host!r}")
        self.host = host
        self.port = port
        self.log = RequestLog(maxlen=log_maxlen)
        self.oauth = OAuthState(access_token_ttl=access_token_ttl, code_ttl=code_ttl)
        self.prompt_cache = PromptCache()
        self._bound_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._foreground_stop: asyncio.Event | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("SandboxServer is not running; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._bound_port}"

    @property
    def anthropic_base_url(self) -> str:
        return self.url + "/anthropic"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/openai/v1"

    @property
    def oauth_base_url(self) -> str:
        return self.url + "/oauth"

    @property
    def access_token_ttl(self) -> int:
        return self.oauth.access_token_ttl

    @access_token_ttl.setter
    def access_token_ttl(self, seconds: int) -> None:
        self.oauth.access_token_ttl = seconds

    @property
    def running(self) -> bool:
        return self._bound_port is not None

    def reset(self) -> None:
        """Forget the request log, the prompt cache and all OAuth codes/grants/tokens; restore
        OAuth defaults."""
        self.log.clear()
        self.oauth.reset()
        self.prompt_cache.clear()

    # -- lifecycle -------------------------------------------------------------------------

    async def _setup(self) -> None:
        app = build_app(self.log, self.oauth, cache=self.prompt_cache)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def _teardown(self) -> None:
        runner, self._runner = self._runner, None
        self._bound_port = None
        if runner is not None:
            await runner.cleanup()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("SandboxServer already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._setup())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._teardown())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="provider-sandbox", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise RuntimeError("provider sandbox did not start in time")
        if failure:
            thread.join()
            self._loop = self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving (also ends a ``serve_forever()`` running on another thread)."""
        if self._foreground_stop is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._foreground_stop.set)
            return
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_forever(self, on_ready: Callable[[SandboxServer], None] | None = None) -> None:
        """Serve on the current thread until SIGINT / SIGTERM (or KeyboardInterrupt)."""
        if self._thread is not None or self._loop is not None:
            raise RuntimeError("SandboxServer already started")

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                # Only possible on the main thread; elsewhere stop() ends the server.
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, stop.set)
            await self._setup()
            self._loop, self._foreground_stop = loop, stop
            try:
                if on_ready is not None:
                    on_ready(self)
                await stop.wait()
            finally:
                self._loop = self._foreground_stop = None
                await self._teardown()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<SandboxServer {where}>"
