"""The gateway's HTTP server: the sockets it listens on and the client connections they accept.

* ``system.max_connections``: past that many open connections (per process), a new one is answered at once with
  a 503 in OpenAI's error shape (``too_many_connections``) and closed, before anything of it is read; the
  connections already open are not disturbed.
* ``system.header_timeout``: a connection that has not sent a complete request head within it, from its start or
  from the end of the previous answer, is closed; idle keep-alive connections too.
* ``system.body_timeout`` bounds the reading of a body (a 408, see ``Gateway.read``); ``system.max_body_size``
  the body itself, as it came and once decompressed.

One listener serves every socket of a process (TCP and TLS alike, in each worker of ``serve --workers N``), and
hands every request, whatever its target, to one handler: no application, router or middleware in between.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from .connection import Connection, Handler, PrepareHook

__all__ = ["Listener"]

log = logging.getLogger("mooltiproxy")


class Listener:
    """The protocol factory of the gateway's sockets, and the connections it has made (made on the running loop,
    which serves them)."""

    def __init__(
        self, handler: Handler, prepare_hook: PrepareHook, *, limit: int, body_limit: int, header_timeout: float
    ) -> None:
        self.handler = handler
        self.prepare_hook = prepare_hook
        self.limit = limit
        self.body_limit = body_limit
        self.header_timeout = header_timeout
        self.connections: set[Connection] = set()
        self.refused = 0
        self.servers: list[asyncio.Server] = []
        self.loop = asyncio.get_running_loop()

    def __call__(self) -> Connection:
        return Connection(self)

    def admit(self, connection: Connection) -> bool:
        if len(self.connections) >= self.limit:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("%d connections open (system.max_connections): refused %d", self.limit, self.refused)
            return False
        self.connections.add(connection)
        return True

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)

    async def listen(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None, reuse_port: bool = False
    ) -> None:
        server = await self.loop.create_server(
            self, host, port, ssl=ssl_context, reuse_port=reuse_port or None, backlog=128
        )
        self.servers.append(server)

    @property
    def addresses(self) -> list[Any]:
        return [sock.getsockname() for server in self.servers for sock in server.sockets]

    async def close(self, grace: float) -> None:
        """Stop accepting; let the requests under way end within ``grace`` seconds, then cut them off."""
        for server in self.servers:
            server.close()
        for connection in list(self.connections):
            connection.stop()
        busy = {c.task for c in self.connections if c.task is not None}
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for connection in list(self.connections):  # what is left past the grace: cut off
            if connection.task is not None:
                connection.task.cancel()
            if connection.transport is not None:
                connection.transport.abort()
        left = {c.task for c in self.connections if c.task is not None}
        if left:
            await asyncio.wait(left, timeout=1.0)
        await asyncio.sleep(0)  # the transports' connection_lost callbacks
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
