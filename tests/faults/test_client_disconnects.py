"""A client that leaves, at every phase of its request: the gateway stops the upstream request it made for it
(closing that connection), keeps no task, logs no traceback, and serves the next client."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import pytest

from ..conftest import KEY
from ..http import request
from .conftest import Leaks, fault_config
from .faulty import Faulty

CHAT = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def gw(gateway: Any, faulty: Faulty, leaks: Leaks) -> Any:
    started = gateway(fault_config(faulty.url, timeout=10))  # a leaving client, not a timeout, ends each request
    leaks.start()
    return started


def head(path: str, body: bytes = b"", stream: bool = False) -> tuple[bytes, bytes]:
    if path.startswith("/c/"):
        body = orjson.dumps({**CHAT, "stream": stream})
    lines = f"POST {path} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
    return (lines + f"Content-Length: {len(body)}\r\n\r\n").encode(), body


def leave_after(url: str, data: bytes, *, wait: float = 0.0, read: int = 0) -> bytes:
    """Connect, send ``data``, read at least ``read`` bytes or wait ``wait`` seconds, then leave (RST)."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    try:
        sock.sendall(data)
        while len(got) < read:
            got += sock.recv(65536)
        time.sleep(wait)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    return got


def serves(gw: Any) -> None:
    reply = request("POST", gw.url + "/c/generate", headers={"Authorization": f"Bearer {KEY}"}, body=CHAT)
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == "fine"


def test_leaving_during_the_headers_or_the_body_sends_nothing_upstream(gw: Any, faulty: Faulty) -> None:
    start, body = head("/c/generate")
    leave_after(gw.url, start[:30], wait=0.1)  # mid-headers
    leave_after(gw.url, start + body[:10], wait=0.1)  # mid-body
    time.sleep(0.2)
    assert faulty.paths == []
    serves(gw)


@pytest.mark.parametrize("path", ["/p/hang", "/c/hang", "/p/slow", "/c/slow"])
def test_leaving_while_the_upstream_works_closes_the_upstream_request(gw: Any, faulty: Faulty, path: str) -> None:
    start, body = head(path)
    leave_after(gw.url, start + body, wait=0.1)
    assert wait_for(lambda: len(faulty.paths) == 1 and faulty.dirty == 0 and not busy(faulty))
    serves(gw)


@pytest.mark.parametrize("path", ["/p/stream-slow", "/c/stream-slow"])
def test_leaving_mid_stream_stops_the_upstream_stream(gw: Any, faulty: Faulty, path: str) -> None:
    start, body = head(path, stream=True)
    got = leave_after(gw.url, start + body, read=300)  # the head and the first events, of 50 paced 20 ms apart
    assert got.startswith(b"HTTP/1.1 200")
    assert wait_for(lambda: faulty.cancelled == 1)  # the upstream connection closed while it still streamed
    serves(gw)


def test_leaving_at_any_moment_around_the_answer_is_handled(gw: Any, faulty: Faulty) -> None:
    """The upstream answers after 300 ms; clients leave from before to after that, 10 ms apart."""
    for path in ("/p/slow", "/c/slow"):
        start, body = head(path)
        for step in range(8):
            leave_after(gw.url, start + body, wait=0.26 + step * 0.01)
    assert wait_for(lambda: not busy(faulty))
    serves(gw)


def busy(faulty: Faulty) -> bool:
    return any(c.task is not None for c in list(faulty.open))


def wait_for(predicate: Any, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
