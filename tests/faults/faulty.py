"""A raw asyncio upstream that fails on purpose, one way per path, and counts its connections.

Every path answers the request it came with (framed by ``Content-Length``), then:

* ``/ok``: 200 ``{"ok": true}``, keep-alive; ``/generate``: a TGI answer; ``/slow``: the same after 0.3 s;
* ``/reset``: resets the connection (RST) before any answer; ``/reset-body``: after the head and 10 of 100 bytes;
* ``/hang``: never answers; ``/hang-body``: the head and 10 of 100 bytes, then nothing;
* ``/garbage``: bytes that are not HTTP; ``/short``: the head and 10 of 100 bytes, then closes (FIN);
* ``/long``: 5 bytes as announced, then a whole second answer nobody asked for (it must never be served);
* ``/error``: 500 with a TGI error body;
* ``/stream-hang``, ``/stream-close``: a TGI stream of two tokens, then nothing, or a close without the last chunk;
* ``/stream-error``: a TGI stream of two tokens, then (50 ms later) TGI's in-stream error event;
* ``/stream-slow``: 50 tokens, 20 ms apart; ``/stream-echo``: 5 tokens that repeat the ``req-N`` of the prompt.

``dirty`` counts the connections that served a fault and that the gateway has not closed yet: once the gateway has
given up on one (a timeout, an error, a client gone), it must close it, not keep it, nor leave it open.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from typing import Any

import orjson

HEAD = "HTTP/1.1 {status}\r\nContent-Type: {type}\r\n{length}\r\n"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def answer(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return HEAD.format(status=status, type=content_type, length=f"Content-Length: {len(body)}\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def token_event(index: int, text: str, last: bool, generated: str = "") -> bytes:
    event: dict[str, Any] = {
        "index": index,
        "token": {"id": index, "text": text, "logprob": -0.1, "special": False},
        "generated_text": generated if last else None,
        "details": {"finish_reason": "length", "generated_tokens": index, "seed": None} if last else None,
    }
    return chunk(b"data:" + orjson.dumps(event) + b"\n\n")


GENERATE = answer("200 OK", b'{"generated_text":"fine"}')
OK = answer("200 OK", b'{"ok":true}')
ERROR = answer("500 Internal Server Error", b'{"error":"the model broke","error_type":"generation"}')
PARTIAL = HEAD.format(status="200 OK", type="application/json", length="Content-Length: 100\r\n").encode() + b"0" * 10
LONG = answer("200 OK", b"hello", "text/plain") + answer("200 OK", b'{"smuggled":true}')
TWO_TOKENS = STREAM_HEAD + token_event(1, "one", False) + token_event(2, " two", False)
TGI_ERROR = chunk(b'data:{"error":"CUDA out of memory","error_type":"generation"}\n\n') + b"0\r\n\r\n"


class Conn(asyncio.Protocol):
    def __init__(self, owner: Faulty) -> None:
        self.owner = owner
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.dirty = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.open.add(self)
        self.owner.accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.open.discard(self)
        self.transport = None
        if self.task is not None:
            self.task.cancel()
            self.owner.cancelled += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            length = int(found.group(1)) if found else 0
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            path = head.split(b" ", 2)[1].decode()
            self.owner.paths.append(path)
            self.serve(path.partition("?")[0], body)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def fault(self) -> None:
        self.dirty = True

    def reset(self) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def serve(self, path: str, body: bytes) -> None:
        simple = {"/ok": OK, "/generate": GENERATE, "/error": ERROR}
        if path in simple:
            self.write(simple[path])
        elif path == "/reset":
            self.reset()
        elif path == "/reset-body":
            self.write(PARTIAL)
            self.reset()
        elif path in ("/hang", "/hang-body", "/garbage", "/stream-hang"):
            self.fault()
            sent = {"/hang": b"", "/hang-body": PARTIAL, "/garbage": b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01\x02\r\n\r\n"}
            self.write(sent.get(path, TWO_TOKENS))
        elif path in ("/short", "/stream-close"):
            self.write(PARTIAL if path == "/short" else TWO_TOKENS)
            assert self.transport is not None
            self.transport.close()
        elif path == "/long":
            self.fault()  # the connection carries an answer too many: it must not be used again
            self.write(LONG)
        elif path in ("/slow", "/stream-slow", "/stream-echo", "/stream-error"):
            self.task = asyncio.get_running_loop().create_task(self.later(path, body))
        else:
            self.write(answer("404 Not Found", b'{"error":"no such fault","error_type":"test"}'))

    async def later(self, path: str, body: bytes) -> None:
        try:
            if path == "/slow":
                await asyncio.sleep(0.3)
                self.write(GENERATE)
                return
            if path == "/stream-error":
                self.write(TWO_TOKENS)
                await asyncio.sleep(0.05)
                self.write(TGI_ERROR)
                return
            if path == "/stream-slow":
                self.write(STREAM_HEAD)
                for i in range(1, 51):
                    await asyncio.sleep(0.02)
                    self.write(token_event(i, f" t{i}", i == 50, "all fifty"))
                self.write(b"0\r\n\r\n")
                return
            marker = re.search(rb"req-\d+", body)
            word = marker.group(0).decode() if marker else "none"
            self.write(STREAM_HEAD)
            for i in range(1, 6):
                await asyncio.sleep(0)
                self.write(token_event(i, f" {word}", i == 5, f" {word}" * 5))
            self.write(b"0\r\n\r\n")
        finally:
            self.task = None


class Faulty:
    """The server; ``url`` once started. Counts are read from the event loop's thread or after it settles."""

    def __init__(self) -> None:
        self.open: set[Conn] = set()
        self.accepted = 0
        self.cancelled = 0
        self.paths: list[str] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    @property
    def dirty(self) -> int:
        return sum(1 for c in list(self.open) if c.dirty)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Conn(self), "127.0.0.1", 0, backlog=2048)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.abort()
        await self.server.wait_closed()
