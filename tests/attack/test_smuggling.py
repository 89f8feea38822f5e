"""Request smuggling: a request whose framing two servers could read differently is refused whole, with a 400 in
OpenAI's error shape that quotes none of it, the connection is closed, and the target receives nothing."""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import KEY
from .conftest import Recorder, config
from .wire import answers, exchange, get, one_answer

HEAD = f"POST /echo HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {KEY}\r\n"
SMUGGLED = "GET /inner HTTP/1.1\r\nHost: gateway\r\n\r\n"

AMBIGUOUS = {
    "CL.TE": f"{HEAD}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "TE.CL": f"{HEAD}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{SMUGGLED}\r\n0\r\n\r\n",
    "two lengths": f"{HEAD}Content-Length: 3\r\nContent-Length: {3 + len(SMUGGLED)}\r\n\r\nabc{SMUGGLED}",
    "two equal lengths": f"{HEAD}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "length list": f"{HEAD}Content-Length: 3, 3\r\n\r\nabc",
    "signed length": f"{HEAD}Content-Length: +3\r\n\r\nabc",
    "hex length": f"{HEAD}Content-Length: 0x3\r\n\r\nabc",
    "chunked then identity": f"{HEAD}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "chunked not last": f"{HEAD}Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    "space before colon": f"{HEAD}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
    "obs-fold": f"{HEAD}Content-Length: 0\r\nX-Folded: a\r\n b\r\n\r\n",
    "obs-fold of TE": f"{HEAD}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": f"{HEAD}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "negative chunk size": f"{HEAD}Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "overflowing chunk size": f"{HEAD}Transfer-Encoding: chunked\r\n\r\n1{'0' * 20}\r\nabc\r\n0\r\n\r\n",
    "chunk without CRLF": f"{HEAD}Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
    "bare LF line ends": f"POST /echo HTTP/1.1\nHost: g\nAuthorization: Bearer {KEY}\nContent-Length: 0\n\n",
    "bare CR in a header": f"{HEAD}X-A: a\rContent-Length: 40\r\nContent-Length: 0\r\n\r\n",
    "NUL in a header": f"{HEAD}X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "two Host headers": f"{HEAD}Host: evil.example\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.2": f"POST /echo HTTP/1.2\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 0\r\n\r\n",
    "space in the request line": f"POST /echo /inner HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\n\r\n",
    "TLS on the plain port": "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + "\x00" * 40,
}


@pytest.mark.parametrize("data", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_an_ambiguous_request_is_refused_whole(gateway: Any, recorder: Recorder, data: str) -> None:
    gw = gateway(config(recorder.url))
    answer = one_answer(gw.url, data.encode("latin-1"))
    assert answer.status == 400
    error = answer.error()
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http")
    assert answer.headers["server"] == "mooltiproxy" and answer.headers["connection"] == "close"
    assert KEY not in error["message"] and "inner" not in error["message"]
    assert recorder.seen == []
    assert one_answer(gw.url, get("/echo", KEY)).status == 200  # and the gateway goes on serving


def test_pipelined_requests_are_answered_in_order_each_forwarded_once(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    one = f"{HEAD}Content-Length: {len(SMUGGLED)}\r\n\r\n{SMUGGLED}"  # a request in the body is only a body
    two = f"GET /public?n=2 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    three = f"GET /echo?n=3 HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
    received, closed = exchange(gw.url, (one + two + three).encode())
    got = answers(received)
    assert closed and [a.status for a in got] == [200, 200, 200]
    assert [a.json()["path"] for a in got] == ["/echo", "/inner?n=2", "/echo?n=3"]
    assert len({a.headers["x-request-id"] for a in got}) == 3
    assert recorder.paths() == ["/echo", "/inner?n=2", "/echo?n=3"]
    assert recorder.seen[0].body == SMUGGLED.encode()


def test_a_chunked_body_is_forwarded_with_a_length_and_no_chunking(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    data = f"{HEAD}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    assert one_answer(gw.url, data.encode()).status == 200
    assert recorder.seen[0].body == b"abcde"
    assert recorder.header(0, b"content-length") == [b"5"]
    assert recorder.header(0, b"transfer-encoding") == []
