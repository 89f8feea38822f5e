"""Reloading a running gateway's config: the gateway new requests go to, and what outlives a reload.

The server serves a ``Live``: it hands each request to the current ``Gateway`` and counts the requests every
gateway has in flight. ``reload`` reads the config file again (off the event loop). A valid config becomes a new
gateway with its own upstream clients, built with what must outlive the old one (``carry_over``: bans, failure
counts, limit counters, keys, metrics); new requests go to it, and the old one is closed once its last request, or
stream, has ended. An invalid config is refused: its problems are logged, with their YAML paths, and the running
config stays.

Some settings only take effect at a restart (the listening address, TLS, logging, the number of workers): a reload
that changes them says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from .config import load_config
from .config.model import Settings
from .errors import ConfigError
from .inbound import Request, Response
from .state import MemoryState

if TYPE_CHECKING:
    from .keys import KeyRing
    from .metrics import Metrics
    from .server import Gateway
    from .state import SharedState

__all__ = ["Carried", "Live", "carry_over", "reload"]

log = logging.getLogger("mooltiproxy")

#: settings a running process cannot change, with the config key that sets them
RESTART_ONLY = {
    "host": "system.host",
    "port": "system.port",
    "ssl_certfile": "system.ssl",
    "ssl_keyfile": "system.ssl",
    "max_body_size": "system.max_body_size",
    "header_timeout": "system.header_timeout",
    "max_connections": "system.max_connections",
    "log_format": "system.log_format",
    "debug": "system.debug",
    "workers": "system.workers",
    "grace_seconds": "system.grace_seconds",
    "pid_file": "system.pid_file",
}


@dataclass
class Carried:
    """What a new gateway takes over from the one it replaces (None: it makes its own)."""

    state: SharedState | None = None
    keys: KeyRing | None = None
    metrics: Metrics | None = None
    metrics_runner: web.AppRunner | None = None


def carry_over(old: Gateway, settings: Settings) -> Carried:
    """What outlives a reload of ``old`` with ``settings``: the one place that decides it.

    - the shared state (bans, failure counts, limit counters), unless ``system.redis`` changed;
    - the virtual keys and the unbans they have applied, unless ``system.keys_db`` or the state changed;
    - the metrics, so their counters go on (with several workers each value lives in a file that one object per
      process writes), and their listener, unless ``system.metrics_host`` changed.
    """
    state = old.state if settings.redis == old.settings.redis else None
    same_keys = state is not None and settings.keys_db == old.settings.keys_db
    return Carried(
        state=state,
        keys=old.keys if same_keys else None,
        metrics=old.metrics,
        metrics_runner=old.metrics_runner if settings.metrics_host == old.settings.metrics_host else None,
    )


def _release(gateway: Gateway, carried: Carried) -> None:
    """Make ``gateway.stop()`` leave alone what ``carried`` handed to the other gateway, which closes it."""
    if carried.state is not None and gateway.state is carried.state:
        gateway.state = MemoryState()
    if carried.keys is not None and gateway.keys is carried.keys:
        gateway.keys = None
    if carried.metrics_runner is not None and gateway.metrics_runner is carried.metrics_runner:
        gateway.metrics_runner = None


class Live:
    """The server's handler and prepare hook, passed on to the current gateway (``replace`` puts another in its
    place)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.started = False
        #: gateway -> its requests in flight (absent: none)
        self._active: dict[Gateway, int] = {}
        #: replaced gateways, set once their last request has ended
        self._idle: dict[Gateway, asyncio.Event] = {}
        self._closing: set[asyncio.Future[None]] = set()
        #: one reload at a time
        self.lock = asyncio.Lock()

    async def handle(self, request: Request) -> Response:
        gateway = self.gateway
        request.served_by = gateway
        active = self._active
        active[gateway] = active.get(gateway, 0) + 1
        try:
            return await gateway.handle(request)
        finally:
            left = active[gateway] - 1
            if left:
                active[gateway] = left
            else:
                del active[gateway]
                idle = self._idle.get(gateway)
                if idle is not None:
                    idle.set()

    def on_prepare(self, request: Request, response: Response) -> None:
        (request.served_by or self.gateway).on_prepare(request, response)

    async def start(self) -> None:
        self.started = True
        await self.gateway.start()

    async def stop(self) -> None:
        for idle in self._idle.values():  # the server has ended every request: close the replaced gateways now
            idle.set()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.gateway.stop()

    @property
    def in_flight(self) -> int:
        return sum(self._active.values())

    async def replace(self, settings: Settings) -> None:
        """Serve new requests with a gateway for ``settings``; the current one closes when its requests end.

        When the new gateway cannot start (a port in use, a keys database that cannot be read), it is closed, the
        error is raised, and the current gateway goes on."""
        from .server import Gateway

        assert self.started, "the gateway has not started"
        old = self.gateway
        carried = carry_over(old, settings)
        new = Gateway(settings, carried)
        try:
            await new.start()
        except BaseException:
            _release(new, carried)
            await new.stop()
            raise
        self.gateway = new
        idle = self._idle[old] = asyncio.Event()
        if old not in self._active:
            idle.set()
        closing = asyncio.ensure_future(self._close_when_idle(old, carried, idle))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close_when_idle(self, old: Gateway, carried: Carried, idle: asyncio.Event) -> None:
        await idle.wait()
        del self._idle[old]
        _release(old, carried)
        await old.stop()
        log.info("the previous configuration's upstream clients are closed")


async def reload(live: Live, path: Path) -> bool:
    """Read the config file ``path`` again and serve new requests with it; False when it is refused (logged)."""
    async with live.lock:
        try:
            settings = await asyncio.to_thread(load_config, path, os.environ)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: invalid configuration\n%s", exc)
            return False
        old = live.gateway.settings
        try:
            await live.replace(settings)
        except Exception as exc:
            log.error("reload failed, the running configuration stays: %s", exc)
            return False
        for warning in settings.warnings:
            log.warning("%s", warning)
        changed = {key: None for field, key in RESTART_ONLY.items() if getattr(old, field) != getattr(settings, field)}
        for key in changed:
            log.warning("%s changed: it takes effect at the next restart", key)
        log.info("reloaded %s: %d target(s), default '%s'", path, len(settings.targets), settings.default_target)
        return True
