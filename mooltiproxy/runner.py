"""Starting and running the gateway: the programmatic API under the CLI (also used by the tests and the demo)."""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from .config.model import Settings
from .inbound import Listener
from .live import Live
from .logs import configure_logging as _configure_logging
from .server import create_server

__all__ = ["run", "serve_forever", "start_gateway"]

T = TypeVar("T")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.ssl_certfile or not settings.ssl_keyfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return context


class GatewayRunner:
    """A started gateway: ``await cleanup()`` stops it (it stops accepting, lets the requests in flight finish within
    ``settings.grace_seconds``, then closes them and the upstream clients); ``live`` is what ``reload`` replaces."""

    def __init__(self, listener: Listener, live: Live, grace: float) -> None:
        self.listener = listener
        self.live = live
        self.grace = grace

    @property
    def addresses(self) -> list[Any]:
        return self.listener.addresses

    async def cleanup(self) -> None:
        try:
            await self.listener.close(self.grace)
        finally:
            await self.live.stop()


async def start_gateway(
    settings: Settings, host: str | None = None, port: int | None = None, *, reuse_port: bool = False
) -> tuple[GatewayRunner, str]:
    """Start the gateway; return its runner (see ``GatewayRunner``) and its base URL.

    ``reuse_port``: listen with ``SO_REUSEPORT``, as every worker of one ``serve`` does on the same port."""
    listener, live = create_server(settings)
    gateway = GatewayRunner(listener, live, settings.grace_seconds)
    try:
        await live.start()
        context = ssl_context(settings)
        bind_host, bind_port = host or settings.host, settings.port if port is None else port
        await listener.listen(bind_host, bind_port, ssl_context=context, reuse_port=reuse_port)
    except BaseException:
        await gateway.cleanup()  # closes the upstream clients opened at start-up
        raise
    sockets = listener.addresses
    bound = sockets[0][1] if sockets else port
    shown = host or settings.host
    if ":" in shown:
        shown = f"[{shown}]"
    scheme = "https" if context else "http"
    return gateway, f"{scheme}://{shown}:{bound}"


class Stoppable(Protocol):
    async def cleanup(self) -> None: ...


async def serve_forever(
    start: Callable[[], Awaitable[Sequence[Stoppable]]], announce: Callable[[], None] | None = None
) -> None:
    """Run what ``start`` started until SIGINT/SIGTERM, then clean up every runner."""
    runners = await start()
    # What start-up made lives as long as the process: keep it out of the garbage collector's full passes, which
    # otherwise walk it again and again under load.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - platforms without signal handlers
            pass
    if announce:
        announce()
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is available (it is a dependency on every platform but Windows)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    uvloop.install()  # pragma: no cover - Python 3.10
    return asyncio.run(main)  # pragma: no cover


def configure_logging(debug: bool, log_format: str = "text") -> None:
    """Log to standard error as text, or one JSON object per line (see ``logs``)."""
    _configure_logging(debug, log_format)
