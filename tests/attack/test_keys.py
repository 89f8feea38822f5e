"""Keys: every wrong, missing, oversized or strange key is a 401 (or a 400 when it is not even HTTP), nothing of the
request reaches the target, no key shows in the logs, and the master key is compared in constant time."""

from __future__ import annotations

import base64
import logging
import statistics
import time
from typing import Any

import pytest

from ..conftest import KEY
from .conftest import Recorder, config
from .wire import get, one_answer

BAD = {
    "wrong": b"Authorization: Bearer sk-not-the-key",
    "one character short": f"Authorization: Bearer {KEY[:-1]}".encode(),
    "one character more": f"Authorization: Bearer {KEY}x".encode(),
    "other case": f"Authorization: Bearer {KEY.upper()}".encode(),
    "empty bearer": b"Authorization: Bearer ",
    "scheme only": b"Authorization: Bearer",
    "no scheme": f"Authorization: {KEY}".encode(),
    "basic scheme": b"Authorization: Basic " + base64.b64encode(f"user:{KEY}".encode()),
    "key then junk": f"Authorization: Bearer {KEY} {KEY}".encode(),
    "non-utf-8 bytes": b"Authorization: Bearer \xff\xfe\xfd",
    "utf-8, not ascii": "Authorization: Bearer clé-ключ-鍵".encode(),
    "latin-1 lookalike": f"Authorization: Bearer {KEY[:-1]}\xe9".encode("latin-1"),
    "6 KB key": b"Authorization: Bearer " + b"k" * 6000,
    "wrong x-api-key": b"x-api-key: sk-not-the-key",
}


def request_with(line: bytes) -> bytes:
    return b"GET /echo HTTP/1.1\r\nHost: gateway\r\n" + line + b"\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("line", BAD.values(), ids=BAD.keys())
def test_a_bad_key_is_a_401_and_reaches_nothing(gateway: Any, recorder: Recorder, line: bytes) -> None:
    gw = gateway(config(recorder.url))
    answer = one_answer(gw.url, request_with(line))
    assert answer.status == 401
    assert answer.error()["type"] == "invalid_request_error"
    assert recorder.seen == []
    assert one_answer(gw.url, get("/echo", KEY)).status == 200  # the gateway still serves the right key


def test_a_missing_key_is_a_401_that_says_how_to_send_one(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    answer = one_answer(gw.url, b"GET /echo HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
    assert answer.status == 401
    assert "Authorization: Bearer" in answer.error()["message"]
    assert recorder.seen == []


def test_a_key_longer_than_a_header_line_is_a_400_that_does_not_quote_it(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    key = "sk-" + "q" * 20000
    answer = one_answer(gw.url, get("/echo", key))
    assert answer.status == 400
    assert answer.error()["code"] == "invalid_http"
    assert b"qqqq" not in answer.body and answer.headers["server"] == "mooltiproxy"
    assert recorder.seen == []


def test_the_scheme_is_case_insensitive_and_spaces_around_the_key_do_not_matter(
    gateway: Any, recorder: Recorder
) -> None:
    gw = gateway(config(recorder.url))
    for line in (f"authorization: bearer {KEY}", f"AUTHORIZATION:   BEARER   {KEY}   "):
        assert one_answer(gw.url, request_with(line.encode())).status == 200
    assert len(recorder.seen) == 2
    assert all(not recorder.header(i, b"authorization") for i in range(2))  # the client's key is never forwarded


def test_no_presented_key_shows_in_the_logs(gateway: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gw = gateway(config(recorder.url))
    guesses = ["sk-guess-AAAA1111", "sk-guess-" + "B" * 9000]
    for guess in guesses:
        assert one_answer(gw.url, get("/echo", guess)).status in (400, 401)
    assert one_answer(gw.url, get("/echo", KEY)).status == 200
    text = "\n".join(r.getMessage() + str(r.__dict__.get("exc_text") or "") for r in caplog.records)
    assert "sk-guess-AAAA1111" not in text and "BBBBBBBB" not in text and KEY not in text
    assert not any(r.exc_info for r in caplog.records)  # no traceback for any of it


def test_the_master_key_check_takes_as_long_whichever_byte_is_wrong() -> None:
    """A 1 MB master key, and presented keys that differ from it in the first or in the last byte. With an early-exit
    comparison the first would be thousands of times faster; compared in constant time they take the same."""
    from mooltiproxy.guard import Guard

    master = "m" * 1_000_000
    guard = Guard(master)
    first = f"Bearer x{master[1:]}".encode()
    last = f"Bearer {master[:-1]}x".encode()
    right = f"Bearer {master}".encode()
    assert not guard.matches(first) and not guard.matches(last) and guard.matches(right)

    def timed(given: bytes) -> float:
        start = time.perf_counter_ns()
        guard.matches(given)
        return time.perf_counter_ns() - start

    samples: dict[bytes, list[float]] = {first: [], last: []}
    for _ in range(41):  # interleaved, so the machine's noise falls on both alike
        for given in samples:
            samples[given].append(timed(given))
    ratio = statistics.median(samples[first]) / statistics.median(samples[last])
    assert 0.33 < ratio < 3, ratio
