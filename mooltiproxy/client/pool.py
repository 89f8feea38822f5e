"""The pool: keep-alive connections to a target's origins, bounded in number, reused only when clean."""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Iterable

from .connection import Connection, Response
from .wire import KEEPALIVE_SECONDS, ConnectFailed, ConnectTimeout, Disconnected, Origin, bounded, encode_request


class Pool:
    """Keep-alive connections to a target's origins, at most ``limit`` open at once."""

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self._idle: dict[Origin, list[Connection]] = {}
        self._open: set[Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        *,
        read_timeout: float | None = None,
    ) -> Response:
        """Send one request and return its answer once the headers have arrived (the body is left to read)."""
        data = encode_request(method, target, origin, headers, body)
        timeout = self.read_timeout if read_timeout is None else read_timeout
        head_only = method == "HEAD"
        conn = await self._checkout(origin, timeout)
        reused = conn.idle_since > 0
        try:
            return await self._exchange(conn, data, head_only, timeout)
        except Disconnected as exc:
            if not reused or exc.answered:
                raise
        conn = await self._checkout(origin, timeout, fresh=True)
        return await self._exchange(conn, data, head_only, timeout)

    async def _exchange(self, conn: Connection, data: bytes, head_only: bool, timeout: float) -> Response:
        waiter = conn.send(data, head_only, timeout)
        handle = bounded(waiter, timeout)
        try:
            return await waiter
        except BaseException:  # a timeout, an error, or the caller cancelled: the answer will never be read
            conn.close()
            self.forget(conn)
            raise
        finally:
            handle.cancel()

    async def _checkout(self, origin: Origin, timeout: float, fresh: bool = False) -> Connection:
        """An idle connection to ``origin`` (the most recent one), else a new one once the limit allows."""
        while True:
            conn = None if fresh else self._take_idle(origin)
            if conn is not None:
                return conn
            if len(self._open) < self.limit:
                return await self._connect(origin)
            if not self._close_an_idle_one():
                await self._wait_for_slot(timeout)

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and now - conn.idle_since < self.keepalive and transport and not transport.is_closing():
                return conn
            conn.close()
            self.forget(conn)
        return None

    async def _wait_for_slot(self, timeout: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        handle = bounded(fut, timeout)
        try:
            await fut
        finally:
            handle.cancel()
            if fut in self._waiters:
                self._waiters.remove(fut)

    def _close_an_idle_one(self) -> bool:
        for conns in self._idle.values():
            if conns:
                conn = conns.pop(0)
                conn.close()
                self.forget(conn)
                return True
        return False

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(self, origin)
        self._open.add(conn)
        context = self._ssl_context() if origin.scheme == "https" else None
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError as exc:
            self.forget(conn)
            raise ConnectTimeout(f"no connection within {self.connect_timeout:g} s") from exc
        except OSError as exc:  # refused, unreachable, unknown host, TLS handshake failure (ssl.SSLError)
            self.forget(conn)
            raise ConnectFailed(exc.strerror or str(exc) or type(exc).__name__) from exc
        except BaseException:
            conn.close()
            self.forget(conn)
            raise
        return conn

    def put_back(self, conn: Connection) -> None:
        conn.idle_since = asyncio.get_running_loop().time()
        conn.response = None
        self._idle.setdefault(conn.origin, []).append(conn)
        self._wake_one()

    def forget(self, conn: Connection) -> None:
        """A connection is closed (or about to be): it no longer counts toward the limit."""
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.origin)
            if idle and conn in idle:
                idle.remove(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
