"""Header injection: nothing a client sends, and nothing the gateway adds, can split or add to the request the
target receives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mooltiproxy.config import build_settings
from mooltiproxy.errors import ConfigError

from ..conftest import KEY
from .conftest import Recorder, config
from .wire import get, one_answer


@pytest.mark.parametrize(
    "line",
    [
        b"target: up\rX-Injected: 1",
        b"target: up\nX-Injected: 1",
        b"target: up\r\n X-Injected: 1",
        b"target: up\x00X-Injected: 1",
        b"X-Any: a\rX-Injected: 1",
    ],
    ids=["CR", "LF", "folded", "NUL", "CR in another header"],
)
def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(
    gateway: Any, recorder: Recorder, line: bytes
) -> None:
    gw = gateway(config(recorder.url))
    data = f"GET /echo HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {KEY}\r\n".encode() + line
    answer = one_answer(gw.url, data + b"\r\nConnection: close\r\n\r\n")
    assert (answer.status, answer.error()["code"]) == (400, "invalid_http")
    assert recorder.seen == []


def test_an_encoded_line_break_in_the_query_stays_encoded(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    assert one_answer(gw.url, get("/echo?q=a%0d%0aX-Injected:%201&r=%00", KEY)).status == 200
    assert recorder.paths() == ["/echo?q=a%0d%0aX-Injected:%201&r=%00"]
    assert recorder.header(0, b"x-injected") == []


def test_header_bytes_beyond_ascii_are_forwarded_as_they_came(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    assert one_answer(gw.url, get("/echo", KEY, "X-Name: caf\xc3\xa9", "X-Raw: \xff\xfe")).status == 200
    assert recorder.header(0, b"x-name") == [b"caf\xc3\xa9"]
    assert recorder.header(0, b"x-raw") == [b"\xff\xfe"]


def test_what_only_concerns_the_client_hop_is_not_forwarded(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    data = get(
        "/echo",
        KEY,
        "target: up",
        "Proxy-Authorization: Basic c2VjcmV0",
        "Keep-Alive: timeout=99",
        "Upgrade: h2c",
        "TE: trailers",
        "X-Kept: yes",
    )
    assert one_answer(gw.url, data).status == 200
    names = {k.lower() for k, _ in recorder.seen[0].raw_headers}
    for gone in (b"authorization", b"target", b"proxy-authorization", b"keep-alive", b"upgrade", b"te"):
        assert gone not in names, gone
    assert recorder.header(0, b"host") == [recorder.url.removeprefix("http://").encode()]
    assert recorder.header(0, b"x-kept") == [b"yes"]


def test_headers_the_client_names_in_connection_are_not_forwarded(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(config(recorder.url))
    data = get("/echo", KEY, "Connection: keep-alive, X-Hop-Secret", "X-Hop-Secret: for the next hop only")
    assert one_answer(gw.url, data).status == 200
    assert recorder.header(0, b"x-hop-secret") == []


@pytest.mark.parametrize("value", ["sk-up\r\nX-Injected: 1", "sk-up\nX-Injected: 1", "sk-up\x00"])
def test_a_target_key_with_a_line_break_is_a_config_error_naming_its_place_not_its_value(
    tmp_path: Path, value: str
) -> None:
    cfg = config("http://127.0.0.1:9")
    cfg["targets"]["up"]["envkey"] = "UP_KEY"
    with pytest.raises(ConfigError) as caught:
        build_settings(cfg, {"MOOLTIPROXY_KEY": KEY, "UP_KEY": value}, base_dir=tmp_path, source="test")
    text = str(caught.value)
    assert "targets.up.envkey" in text and "line break" in text
    assert "sk-up" not in text
