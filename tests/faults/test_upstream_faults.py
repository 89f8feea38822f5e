"""A broken upstream: every way it can fail gets a clear answer within the timeouts, in the route's own shape, and
leaves no task and no broken connection behind."""

from __future__ import annotations

import http.client
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from ..conftest import KEY
from ..http import request
from .conftest import TIMEOUT, Leaks, fault_config
from .faulty import Faulty


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


CHAT = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def connect(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    return http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10), parts.path


def chat(url: str, stream: bool = False) -> tuple[int, bytes]:
    """A chat request; a stream is read to its end or to where it breaks off (with what came before)."""
    conn, path = connect(url)
    try:
        body = orjson.dumps({**CHAT, "stream": stream})
        conn.request("POST", path, body, {**auth(), "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = b""
        try:
            while piece := resp.read1(65536):
                data += piece
        except (http.client.IncompleteRead, ConnectionError) as exc:
            data += getattr(exc, "partial", b"")
            data += b"<cut>"
        return resp.status, data
    finally:
        conn.close()


def passthrough(url: str) -> tuple[int, bytes]:
    """A pass-through GET; a body that breaks off ends with ``<cut>``."""
    conn, path = connect(url)
    try:
        conn.request("GET", path, headers=auth())
        resp = conn.getresponse()
        try:
            return resp.status, resp.read()
        except http.client.IncompleteRead as exc:
            return resp.status, exc.partial + b"<cut>"
    finally:
        conn.close()


def error_of(data: bytes) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(data)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture
def gw(gateway: Any, faulty: Faulty, leaks: Leaks) -> Any:
    started = gateway(fault_config(faulty.url))
    leaks.start()
    return started


def timed(call: Any, *args: Any) -> tuple[Any, float]:
    start = time.monotonic()
    result = call(*args)
    return result, time.monotonic() - start


def test_a_refused_connection_is_a_502_at_once(gateway: Any, leaks: Leaks) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    gw = gateway(fault_config(f"http://127.0.0.1:{port}"))
    for path in ("/p/ok", "/c/generate"):
        (status, data), took = timed(chat if path.startswith("/c") else passthrough, gw.url + path)
        assert status == 502 and error_of(data)["type"] == "upstream_error", data
        assert took < 2


@pytest.mark.parametrize("fault", ["reset", "garbage"])
def test_a_reset_or_garbage_before_the_answer_is_a_502(gw: Any, faulty: Faulty, fault: str) -> None:
    for path in (f"/p/{fault}", f"/c/{fault}"):
        (status, data), took = timed(chat if path.startswith("/c") else passthrough, gw.url + path)
        assert status == 502, (path, data)
        error_of(data)
        assert took < TIMEOUT + 2


def test_an_upstream_that_never_answers_is_a_504_at_the_timeout(gw: Any, faulty: Faulty) -> None:
    for path in ("/p/hang", "/c/hang"):
        (status, data), took = timed(chat if path.startswith("/c") else passthrough, gw.url + path)
        assert status == 504 and error_of(data)["code"] == "upstream_timeout", data
        assert TIMEOUT * 0.8 < took < TIMEOUT + 2


@pytest.mark.parametrize("fault", ["reset-body", "hang-body", "short"])
def test_a_body_that_breaks_off_is_cut_short_when_passed_through_and_a_5xx_when_translated(
    gw: Any, faulty: Faulty, fault: str
) -> None:
    (status, data), took = timed(passthrough, gw.url + f"/p/{fault}")
    assert status == 200 and data == b"0" * 10 + b"<cut>"  # fewer bytes than announced: the client knows
    assert took < TIMEOUT + 2
    (status, data), took = timed(chat, gw.url + f"/c/{fault}")
    assert status == (504 if fault == "hang-body" else 502), data
    error_of(data)
    assert took < TIMEOUT + 2


def test_an_answer_longer_than_announced_is_cut_there_and_its_connection_not_reused(gw: Any, faulty: Faulty) -> None:
    assert passthrough(gw.url + "/p/long") == (200, b"hello")
    for _ in range(3):  # the smuggled second answer is never served as the answer to another request
        assert passthrough(gw.url + "/p/ok") == (200, b'{"ok":true}')


def test_an_upstream_500_is_relayed_or_translated(gw: Any, faulty: Faulty) -> None:
    status, data = passthrough(gw.url + "/p/error")
    assert (status, orjson.loads(data)["error_type"]) == (500, "generation")
    for stream in (False, True):  # a stream that fails before it starts has an HTTP status to tell it
        status, data = chat(gw.url + "/c/error", stream)
        assert status >= 500 and "the model broke" in error_of(data)["message"]


def events(data: bytes) -> list[Any]:
    found = []
    for block in data.replace(b"<cut>", b"").split(b"\n\n"):
        line = block.strip()
        if line.startswith(b"data:") and line != b"data: [DONE]":
            found.append(orjson.loads(line[5:]))
    return found


@pytest.mark.parametrize("fault", ["stream-hang", "stream-close", "stream-error"])
def test_a_translated_stream_that_breaks_ends_with_an_error_event_after_what_came(
    gw: Any, faulty: Faulty, fault: str
) -> None:
    (status, data), took = timed(chat, gw.url + f"/c/{fault}", True)
    assert status == 200
    got = events(data)
    deltas = "".join(e["choices"][0]["delta"].get("content") or "" for e in got if e.get("choices"))
    assert deltas == "one two"
    assert "error" in got[-1], got[-1]
    assert took < TIMEOUT + 2


@pytest.mark.parametrize("fault", ["stream-hang", "stream-close"])
def test_a_passed_through_stream_that_breaks_is_cut_short_after_what_came(gw: Any, faulty: Faulty, fault: str) -> None:
    (status, data), took = timed(passthrough, gw.url + f"/p/{fault}")
    assert status == 200 and data.endswith(b"<cut>")
    assert [e["token"]["text"] for e in events(data)] == ["one", " two"]
    assert took < TIMEOUT + 2


def test_the_gateway_serves_on_after_every_fault(gw: Any, faulty: Faulty) -> None:
    for fault in ("reset", "garbage", "hang", "short", "long", "stream-close", "error"):
        passthrough(gw.url + f"/p/{fault}")
        chat(gw.url + f"/c/{fault}")
    assert passthrough(gw.url + "/p/ok") == (200, b'{"ok":true}')
    status, data = chat(gw.url + "/c/generate")
    assert status == 200 and orjson.loads(data)["choices"][0]["message"]["content"] == "fine"
    assert request("GET", gw.url + "/-/health").status == 200
