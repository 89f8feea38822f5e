"""Path tricks: the target only ever receives the paths the config maps. A request path is matched exactly as
it decodes, dot-segments are not resolved into another route, and a spelling that decodes to a mapped path is
that path."""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import KEY
from .conftest import Recorder, config
from .wire import get, one_answer

# the gateway maps /echo → /echo and /public → /inner; the target also has everything else
UNMAPPED = [
    "/inner",
    "/public/../inner",
    "/echo/../inner",
    "/public/./",
    "/%2e%2e/inner",
    "/%2E%2E/inner",
    "/public/%2e%2e/inner",
    "/public%2f..%2finner",
    "/public%2F..%2Finner",
    "//inner",
    "//public",
    "///public",
    "/./public",
    "/public/",
    "/public;x=1",
    "/PUBLIC",
    "/public%00",
    "/public%0d%0aX-Injected:%201",
    "/public\\..\\inner",
    "/public%5c..%5cinner",
    "/%252e%252e/inner",
    "/v1/../inner",
    "/" + "a" * 8000,
    "/public/" + "../" * 2000 + "inner",
]


@pytest.mark.parametrize("path", UNMAPPED, ids=[p if len(p) < 40 else p[:30] + "…" for p in UNMAPPED])
def test_a_path_trick_is_a_404_and_reaches_nothing(gateway: Any, recorder: Recorder, path: str) -> None:
    gw = gateway(config(recorder.url))
    answer = one_answer(gw.url, get(path, KEY))
    assert (answer.status, answer.error()["code"]) == (404, "unknown_route")
    assert recorder.seen == []


@pytest.mark.parametrize("path", ["/%70ublic", "/publi%63", "/v1/public", "http://elsewhere.example/public"])
def test_another_spelling_of_a_mapped_path_is_that_path(gateway: Any, recorder: Recorder, path: str) -> None:
    gw = gateway(config(recorder.url))
    assert one_answer(gw.url, get(path, KEY)).status == 200
    assert recorder.paths() == ["/inner"]


def test_the_query_goes_along_but_never_changes_the_path(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    assert one_answer(gw.url, get("/public?next=../../admin&p=/inner/..", KEY)).status == 200
    assert recorder.paths() == ["/inner?next=../../admin&p=/inner/.."]


def test_a_path_longer_than_a_request_line_is_a_400(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    answer = one_answer(gw.url, get("/" + "a" * 9000, KEY))
    assert (answer.status, answer.error()["code"]) == (400, "invalid_http")
    assert recorder.seen == []


ODD_TARGETS = {
    "CONNECT 127.0.0.1:22 HTTP/1.1": (404, "unknown_route"),  # no path: no route
    "GET http://elsewhere.example HTTP/1.1": (404, "unknown_route"),
    "GET ?x=1 HTTP/1.1": (400, "invalid_http"),
    "GET public HTTP/1.1": (400, "invalid_http"),
    "TRACE /echo HTTP/1.1": (405, "method_not_allowed"),
}


@pytest.mark.parametrize(("line", "expected"), ODD_TARGETS.items(), ids=ODD_TARGETS.keys())
def test_a_request_target_that_is_not_a_mapped_path_reaches_nothing(
    gateway: Any, recorder: Recorder, line: str, expected: tuple[int, str]
) -> None:
    gw = gateway(config(recorder.url))
    data = f"{line}\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode()
    answer = one_answer(gw.url, data)
    assert (answer.status, answer.error()["code"]) == expected
    assert recorder.seen == []


def test_options_star_is_answered_by_the_gateway(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    data = f"OPTIONS * HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode()
    answer = one_answer(gw.url, data)
    assert answer.status == 204 and "GET" in answer.headers["allow"]
    assert recorder.seen == []
