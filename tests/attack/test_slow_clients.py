"""Slow and greedy clients: slowloris headers, a body that never ends, idle connections and too many of them are
bounded by ``system.header_timeout``, ``body_timeout`` and ``max_connections``, and others are served meanwhile."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from ..conftest import KEY
from .conftest import Recorder, config
from .wire import answers, get, one_answer, port_of


@contextmanager
def connection(url: str, timeout: float = 5) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=timeout) as sock:
        yield sock


def read_all(sock: socket.socket) -> bytes:
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    return received


def test_a_client_trickling_its_headers_is_cut_off_at_the_header_timeout(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url, header_timeout=0.5))
    start = time.monotonic()
    with connection(gw.url) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: g\r\n")
        try:
            for i in range(40):  # a header line every 0.1 s: the request would take 4 s to complete
                sock.sendall(b"X-Slow-%d: 1\r\n" % i)
                time.sleep(0.1)
                if i == 1:
                    assert one_answer(gw.url, get("/echo", KEY)).status == 200  # another client is served meanwhile
            pytest.fail("the gateway was still reading the headers after 4 s")
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert time.monotonic() - start < 2.5
    assert recorder.paths() == ["/echo"]  # the other client's request only


def test_a_client_that_sends_nothing_is_closed_at_the_header_timeout(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url, header_timeout=0.5))
    with connection(gw.url) as sock:
        start = time.monotonic()
        assert read_all(sock) == b""
        assert 0.3 < time.monotonic() - start < 2.5


def test_an_idle_keep_alive_connection_is_closed_at_the_header_timeout(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url, header_timeout=0.5))
    with connection(gw.url) as sock:
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        start = time.monotonic()
        received = read_all(sock)
        assert [a.status for a in answers(received)] == [200]
        assert time.monotonic() - start < 2.5


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes(
    gateway: Any, recorder: Recorder
) -> None:
    gw = gateway(config(recorder.url, body_timeout=0.5))
    with connection(gw.url) as sock:
        start = time.monotonic()
        head = f"POST /echo HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head.encode() + b"x" * 10)
        received = read_all(sock)
        elapsed = time.monotonic() - start
    answer = answers(received)[0]
    assert (answer.status, answer.error()["code"]) == (408, "request_timeout")
    assert answer.headers["connection"] == "close"
    assert 0.4 < elapsed < 2.5, elapsed
    assert recorder.seen == []
    assert one_answer(gw.url, get("/echo", KEY)).status == 200


def test_a_body_trickled_byte_by_byte_is_bounded_too(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url, body_timeout=0.5))
    with connection(gw.url) as sock:
        start = time.monotonic()
        head = f"POST /echo HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head.encode())
        try:
            for _ in range(100):  # 5 s for the whole body at this pace
                sock.sendall(b"x")
                time.sleep(0.05)
                if time.monotonic() - start > 1.0:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = answers(read_all(sock))[0]
    assert (answer.status, answer.error()["code"]) == (408, "request_timeout")
    assert recorder.seen == []


def test_connections_past_the_limit_are_refused_and_those_open_are_served(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url, max_connections=4))
    with ExitStack() as stack:
        held = [stack.enter_context(connection(gw.url)) for _ in range(4)]
        time.sleep(0.1)  # the gateway has counted them
        for _ in range(3):
            refused = one_answer(gw.url, get("/echo", KEY))
            assert (refused.status, refused.error()["code"]) == (503, "too_many_connections")
            assert refused.headers["retry-after"] == "1"
        # an open connection is still served, on the connection it holds
        held[0].sendall(get("/echo", KEY))
        assert [a.status for a in answers(read_all(held[0]))] == [200]
        # its close frees a place
        time.sleep(0.1)
        assert one_answer(gw.url, get("/echo", KEY)).status == 200
    time.sleep(0.1)
    assert one_answer(gw.url, get("/echo", KEY)).status == 200
    assert recorder.paths() == ["/echo", "/echo", "/echo"]
