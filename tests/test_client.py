"""The upstream client (``mooltiproxy.client``) against a scripted raw server: framings, reuse, errors, limits."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mooltiproxy.client import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    InvalidHeader,
    Origin,
    Pool,
    ReadTimeout,
)

#: what the server does with one request: the bytes to write, then "keep", "close" or "hang"
Reply = tuple[bytes, str]


class Scripted(asyncio.Protocol):
    """One accepted connection; it answers each request with what ``Server.reply`` says."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.accepted.append(transport)
        self.server.connections += 1
        self.server.open += 1
        self.server.most = max(self.server.most, self.server.open)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            found = re.search(rb"(?i)content-length: (\d+)", head)
            length = int(found.group(1)) if found else 0
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.server.requests.append(head + b"\r\n\r\n" + rest[:length])
            self.served += 1
            if self.server.drop_second and self.served == 2:
                data, then = b"", "close"
            else:
                data, then = self.server.reply(head)
            assert self.transport is not None
            self.transport.write(data)
            if then == "close":
                self.transport.close()
                return


class Server:
    def __init__(self, reply: Callable[[bytes], Reply]) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.most = 0
        self.drop_second = False
        self.accepted: list[asyncio.Transport] = []
        self.pools: list[Pool] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.get_running_loop().create_server(lambda: Scripted(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        for p in self.pools:
            await p.close()
        self.server.close()
        for transport in self.accepted:
            transport.close()
        await self.server.wait_closed()
        await asyncio.sleep(0)  # the transports' closing callbacks

    def pool(self, **kw: Any) -> Pool:
        made = pool(**kw)
        self.pools.append(made)
        return made

    @property
    def origin(self) -> Origin:
        return Origin("http", "127.0.0.1", self.port)


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


async def fetch(pool: Pool, origin: Origin, method: str = "GET", **kw: Any) -> tuple[int, bytes]:
    target, headers, body = kw.pop("target", "/"), kw.pop("headers", ()), kw.pop("body", None)
    resp = await pool.request(origin, method, target, headers, body, **kw)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


def pool(**kw: Any) -> Pool:
    return Pool(limit=kw.pop("limit", 8), connect_timeout=2, read_timeout=kw.pop("read_timeout", 2), **kw)


def test_answers_read_to_their_end_reuse_the_connection() -> None:
    async def test() -> None:
        async with Server(lambda head: (ok(), "keep")) as server:
            p = server.pool()
            for _ in range(3):
                assert await fetch(p, server.origin) == (200, b"hello")
            assert server.connections == 1 and len(server.requests) == 3

    run(test)


@pytest.mark.parametrize(
    ("answer", "body", "reused"),
    [
        (ok(b"by length"), b"by length", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n",
            b"abcde",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end", b"to the end", False),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"after 1xx"),
            b"after 1xx",
            True,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
        (ok(b"x", b"Connection: close\r\n"), b"x", False),
    ],
    ids=["content-length", "chunked", "close-delimited", "interim 1xx", "204", "connection close"],
)
def test_every_framing_gives_the_body_and_reuse_follows_it(answer: bytes, body: bytes, reused: bool) -> None:
    async def test() -> None:
        then = "close" if b"Connection: close" in answer else "keep"
        async with Server(lambda head: (answer, then)) as server:
            p = server.pool()
            assert (await fetch(p, server.origin))[1] == body
            assert (await fetch(p, server.origin))[1] == body
            assert server.connections == (1 if reused else 2)

    run(test)


def test_a_head_answer_has_no_body_whatever_its_length_says() -> None:
    """Its connection is not reused: the response parser cannot be told that no body follows."""

    async def test() -> None:
        async with Server(lambda head: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "keep")) as server:
            p = server.pool()
            assert await fetch(p, server.origin, "HEAD") == (200, b"")
            assert await fetch(p, server.origin, "HEAD") == (200, b"")
            assert server.connections == 2

    run(test)


def test_bytes_after_the_announced_body_keep_the_connection_out_of_the_pool() -> None:
    async def test() -> None:
        replies = iter([(ok(b"hello") + ok(b"smuggled"), "keep"), (ok(b"second"), "keep")])
        async with Server(lambda head: next(replies)) as server:
            p = server.pool()
            assert await fetch(p, server.origin) == (200, b"hello")
            assert await fetch(p, server.origin) == (200, b"second")
            assert server.connections == 2

    run(test)


def test_a_reused_connection_the_server_drops_before_answering_is_replaced_once() -> None:
    """The keep-alive race: the server closes an idle connection just as a request goes out on it."""

    async def test() -> None:
        async with Server(lambda head: (ok(), "keep")) as server:
            server.drop_second = True
            p = server.pool()
            assert await fetch(p, server.origin) == (200, b"hello")
            assert await fetch(p, server.origin, "POST", body=b"{}") == (200, b"hello")
            assert server.connections == 2 and len(server.requests) == 3  # the dropped one, then the replayed one

    run(test)


def test_a_fresh_connection_dropped_before_answering_is_not_retried() -> None:
    async def test() -> None:
        async with Server(lambda head: (b"", "close")) as server:
            p = server.pool()
            with pytest.raises(Disconnected):
                await fetch(p, server.origin, "POST", body=b"{}")
            assert len(server.requests) == 1

    run(test)


def test_errors_say_what_went_wrong() -> None:
    async def test() -> None:
        p = pool(read_timeout=0.3)
        with pytest.raises(ConnectFailed):
            await fetch(p, Origin("http", "127.0.0.1", 9))
        async with Server(lambda head: (b"", "hang")) as server:
            with pytest.raises(ReadTimeout):
                await fetch(p, server.origin)
        async with Server(lambda head: (b"", "close")) as server:
            with pytest.raises(Disconnected) as caught:
                await fetch(p, server.origin)
            assert not caught.value.answered
        async with Server(lambda head: (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "close")) as server:
            with pytest.raises(Disconnected) as caught:
                await fetch(p, server.origin)
            assert caught.value.answered
        async with Server(lambda head: (b"SSH-2.0-OpenSSH\r\n\r\n", "keep")) as server:
            with pytest.raises(BadResponse):
                await fetch(p, server.origin)
        assert not p._open  # every failed connection was closed and forgotten
        await p.close()

    run(test)


def test_a_header_that_would_split_the_request_is_refused_before_connecting() -> None:
    async def test() -> None:
        async with Server(lambda head: (ok(), "keep")) as server:
            p = server.pool()
            for bad in ("a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"):
                with pytest.raises(InvalidHeader):
                    await fetch(p, server.origin, headers=[("X-Value", bad)])
            with pytest.raises(InvalidHeader):
                await fetch(p, server.origin, target="/a HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /b")
            assert server.connections == 0

    run(test)


def test_the_pool_limit_is_held_and_a_wait_for_a_slot_is_bounded() -> None:
    async def test() -> None:
        async with Server(lambda head: (b"", "hang") if b"/hang" in head else (ok(), "keep")) as server:
            p = server.pool(limit=1, read_timeout=0.3)
            hanging = asyncio.ensure_future(fetch(p, server.origin, target="/hang", read_timeout=1.0))
            await asyncio.sleep(0.05)
            with pytest.raises(ReadTimeout):  # no free connection within the read timeout
                await fetch(p, server.origin)
            with pytest.raises(ReadTimeout):
                await hanging
            assert await fetch(p, server.origin) == (200, b"hello")  # the slot came back
            assert server.most == 1

    run(test)


def test_a_cancelled_request_closes_its_connection() -> None:
    async def test() -> None:
        async with Server(lambda head: (b"", "hang")) as server:
            p = server.pool(read_timeout=10)
            task = asyncio.ensure_future(fetch(p, server.origin))
            await asyncio.sleep(0.05)
            assert server.open == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            assert server.open == 0 and not p._open

    run(test)
