"""One connection to a target and the answer read on it: an ``asyncio.Protocol`` over llhttp (``httptools``)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict

from .wire import BadResponse, ClientError, Disconnected, Origin, ReadTimeout, bounded, phrase

if TYPE_CHECKING:
    from .pool import Pool

#: unread body bytes buffered before the connection stops reading (the caller is slower than the target)
HIGH_WATER = 256 * 1024


class Connection(asyncio.Protocol):
    """One connection to an origin and the answer being read on it."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        #: the answer's headers have arrived (set with the Response) or failed
        self.waiter: asyncio.Future[Response] | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.reason = ""
        self.timeout = pool.read_timeout
        self.head_only = False
        self.received = False
        self.reusable = True
        self.closed = False
        self.idle_since = 0.0
        self._length_known = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self.waiter is None and (self.response is None or self.response.complete):
            self.close()  # nothing was asked: a target talking out of turn
            self.pool.forget(self)
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"the target's answer is not valid HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self.pool.forget(self)
        response = self.response
        if response is not None and not response.complete and response.close_delimited:
            response.finish()  # an answer without Content-Length or chunking ends with the connection
            return
        reason = f": {exc}" if exc else ""
        self._fail(Disconnected(f"the target closed the connection{reason}", answered=self.received))

    def pause_writing(self) -> None:  # the request body is written at once; nothing to pause
        pass

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.waiter is None:  # a second answer right behind the first, to a request never sent
            self.reusable = False

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1")
        lower = key.lower()
        if lower == "content-length" or (lower == "transfer-encoding" and b"chunked" in value.lower()):
            self._length_known = True
        self.headers.add(key, value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self.waiter is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue, 103 Early Hints): skip it
            self.headers = CIMultiDict()
            self._length_known = False
            return
        no_body = self.head_only or status in (204, 304)
        delimited = not self._length_known and not no_body
        response = Response(self, status, self.reason, self.headers, self.timeout, close_delimited=delimited)
        self.response = response
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self.head_only:  # no body follows, whatever the headers say: llhttp would wait for one
            self.reusable = False
            response.finish()

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self.response.complete:
            self.response.feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.complete:
            return
        if not self.parser.should_keep_alive():
            self.reusable = False
        response.finish()

    # -- used by Pool and Response

    def send(self, data: bytes, head_only: bool, timeout: float) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.response = None
        self.headers = CIMultiDict()
        self.reason = ""
        self.timeout = timeout
        self.head_only = head_only
        self.received = False
        self._length_known = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def _fail(self, exc: ClientError) -> None:
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif self.response is not None and not self.response.complete:
            self.response.fail(exc)
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class Response:
    """An answer: status, headers, and its body read with ``read`` or ``iter_any``; ``release`` when done."""

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        timeout: float,
        *,
        close_delimited: bool,
    ) -> None:
        self.status = status
        self.reason = reason or phrase(status)
        self.headers = headers
        self.timeout = timeout
        self.close_delimited = close_delimited
        self.complete = False
        self._conn: Connection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._error: ClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self._conn is not None:
            transport = self._conn.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                self._paused = True
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: ClientError) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (each read may carry several chunks of the target's)."""
        timeout = self.timeout
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self._conn is not None and self._conn.transport is not None:
                    self._paused = False
                    self._conn.transport.resume_reading()
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self.complete:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            handle = bounded(self._waiter, timeout)
            try:
                await self._waiter
            except ReadTimeout as exc:
                self._error = exc
                raise
            finally:
                handle.cancel()
                self._waiter = None

    def arrived(self) -> bytes | None:
        """The whole body when it has all arrived already (no wait), taken from the answer; else None, and the body
        is left to ``read`` or ``iter_any``."""
        if not self.complete or self._error is not None:
            return None
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        return data

    async def read(self) -> bytes:
        """The whole body."""
        whole = self.arrived()
        if whole is not None:  # no async generator to make (and for the loop to track) when it is all here
            return whole
        parts = [chunk async for chunk in self.iter_any()]
        return b"".join(parts)

    def release(self) -> None:
        """Hand the connection back for reuse when the answer was read to its end, else close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.complete and not self._chunks and self._error is None and conn.reusable:
            conn.pool.put_back(conn)
        else:
            conn.close()
            conn.pool.forget(conn)
