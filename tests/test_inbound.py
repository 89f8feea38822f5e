"""The gateway's own HTTP/1.1 server, on raw sockets: interim answers, compressed bodies and their limit, HTTP/1.0,
HEAD, pipelining past the read-ahead depth, and an answer sent before its request's body has all arrived."""

from __future__ import annotations

import gzip
import socket
import time
import zlib
from typing import Any

import orjson
import pytest

from .attack.wire import answers, exchange, get, one_answer, port_of
from .conftest import KEY, passthrough_config


@pytest.fixture
def gw(gateway: Any, echo_upstream: str) -> Any:
    config = passthrough_config(echo_upstream)
    config["system"] = {"max_body_size": 64 * 1024}
    return gateway(config)


def post(body: bytes, *extra: str) -> bytes:
    return get("/echo", KEY, "Content-Type: application/json", *extra, method="POST", body=body)


def post_head(length: int, *extra: str) -> bytes:
    """The head alone of a JSON POST whose body of ``length`` bytes is to follow."""
    lines = ["POST /echo HTTP/1.1", "Host: g", f"Authorization: Bearer {KEY}", "Content-Type: application/json"]
    return ("\r\n".join([*lines, f"Content-Length: {length}", *extra]) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> bytes:
    """One answer framed by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-l")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_expect_100_continue_gets_the_interim_answer_before_the_body_is_sent(gw: Any) -> None:
    body = b'{"sent": "after the interim answer"}'
    head = post_head(len(body), "Expect: 100-continue", "Connection: close")
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # without it the client would wait, then send
        sock.sendall(body)
        answer = answers(read_answer(sock))[0]
    assert answer.status == 200 and answer.json()["body"] == body.decode()


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as the RFC says
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw, as some clients send it
    ],
)
def test_a_compressed_body_is_forwarded_decoded(gw: Any, encoding: str, pack: Any) -> None:
    answer = one_answer(gw.url, post(pack(b'{"packed": 1}'), f"Content-Encoding: {encoding}"))
    assert answer.status == 200
    assert answer.json()["body"] == '{"packed": 1}'


def test_a_body_over_the_limit_once_decompressed_is_a_413(gw: Any) -> None:
    bomb = gzip.compress(b'{"a": "' + b"0" * (10 * 1024 * 1024) + b'"}')  # 10 MiB in about 10 KiB
    assert len(bomb) < 64 * 1024
    answer = one_answer(gw.url, post(bomb, "Content-Encoding: gzip"))
    assert (answer.status, answer.error()["code"]) == (413, "payload_too_large")
    assert "decompressed" not in answer.error()["message"]  # the limit, said as for any other body


def test_an_unknown_content_encoding_is_a_400(gw: Any) -> None:
    answer = one_answer(gw.url, post(b"\x1b\x00", "Content-Encoding: br"))
    assert answer.status == 400
    assert "'br' is not supported" in answer.error()["message"]


def test_http_1_0_closes_unless_asked_to_keep_alive(gw: Any) -> None:
    plain = f"GET /echo HTTP/1.0\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    received, closed = exchange(gw.url, plain)
    assert closed and answers(received)[0].status == 200
    assert answers(received)[0].headers["connection"] == "close"
    kept = f"GET /echo HTTP/1.0\r\nAuthorization: Bearer {KEY}\r\nConnection: keep-alive\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=5) as sock:
        for _ in range(2):  # two answers on one connection
            sock.sendall(kept)
            answer = answers(read_answer(sock))[0]
            assert answer.status == 200 and answer.headers["connection"] == "keep-alive"


def test_head_has_the_length_and_no_body(gw: Any) -> None:
    received, closed = exchange(gw.url, get("/-/health", KEY, method="HEAD"))
    head, _, body = received.partition(b"\r\n\r\n")
    assert closed and head.startswith(b"HTTP/1.1 200") and body == b""
    got = one_answer(gw.url, get("/-/health", KEY))  # the same answer to a GET, body and all
    assert orjson.loads(got.body)["status"] == "ok"
    assert int(answers(received)[0].headers["content-length"]) == len(got.body)


def test_every_answer_has_a_date_and_the_gateway_as_server(gw: Any) -> None:
    answer = one_answer(gw.url, get("/echo", KEY))
    assert answer.headers["server"] == "mooltiproxy"
    assert answer.headers["date"].endswith(" GMT")
    time.strptime(answer.headers["date"], "%a, %d %b %Y %H:%M:%S GMT")


def test_more_pipelined_requests_than_are_read_ahead_are_answered_in_order(gw: Any) -> None:
    """Reading pauses while too many requests wait, and resumes as they are answered."""

    def one(n: int) -> bytes:
        return f"GET /echo?n={n} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()

    received = b""
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=5) as sock:
        for part in range(4):  # in several reads: the later ones arrive while reading is paused
            sock.sendall(b"".join(one(n) for n in range(part * 20, part * 20 + 20)))
            time.sleep(0.05)
        sock.sendall(get("/echo?n=last", KEY))
        while chunk := sock.recv(65536):
            received += chunk
    queries = [a.json()["query"] for a in answers(received)]
    assert queries == [f"n={n}" for n in range(80)] + ["n=last"]


def test_an_answer_before_the_end_of_the_body_lets_the_client_finish_sending(gw: Any) -> None:
    """A 413 for a declared length, sent while the client is still sending: the gateway half-closes and reads (and
    drops) what still comes for a moment, so the client is not reset mid-send and reads the answer, then the end."""
    head = post_head(4 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=5) as sock:
        sock.sendall(head)
        time.sleep(0.2)  # the answer is written now
        for _ in range(16):
            sock.sendall(b"x" * 65536)  # more than the socket buffers hold: read by the gateway, or a reset
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    answer = answers(received)[0]
    assert (answer.status, answer.error()["code"]) == (413, "payload_too_large")
    assert answer.headers["connection"] == "close"


def test_too_many_headers_are_a_400(gw: Any) -> None:
    many = [f"X-Header-{n}: {n}" for n in range(200)]
    answer = one_answer(gw.url, get("/echo", KEY, *many))
    assert (answer.status, answer.error()["code"]) == (400, "invalid_http")
    assert "more than 128 headers" in answer.error()["message"]
