"""Hostile or broken traffic on either side: the gateway answers clearly, keeps its promises, and keeps serving."""

from __future__ import annotations

import gzip
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from .conftest import KEY, passthrough_config
from .http import request


def auth(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", **extra}


def raw_exchange(url: str, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet."""
    port = int(url.rsplit(":", 1)[1])
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def test_an_upstream_body_broken_off_is_cut_short_not_followed_by_a_second_answer(
    gateway: Any, echo_upstream: str
) -> None:
    gw = gateway(passthrough_config(echo_upstream, {"/cut": None}))
    head = f"GET /cut HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode()
    received = raw_exchange(gw.url, head)
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert received.count(b"HTTP/1.1") == 1
    assert received.endswith(b"0123456789")  # fewer bytes than Content-Length: the client knows it is incomplete
    assert request("GET", gw.url + "/-/health").status == 200


def test_a_second_forwarded_for_line_cannot_dodge_the_blacklist(gateway: Any, echo_upstream: str) -> None:
    config = passthrough_config(echo_upstream)
    config["system"] = {"trusted_proxies": ["127.0.0.1"]}
    config["cerbere"] = {"blacklist": ["1.2.3.4"]}
    gw = gateway(config)
    head = (
        f"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n"
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4:5555\r\n\r\n"
    ).encode()
    assert raw_exchange(gw.url, head).startswith(b"HTTP/1.1 403")


def test_a_non_utf8_key_is_a_401_and_counts_toward_the_ban(gateway: Any, echo_upstream: str) -> None:
    config = passthrough_config(echo_upstream)
    config["cerbere"] = {"max_tries": 2}
    gw = gateway(config)
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
    assert raw_exchange(gw.url, head).startswith(b"HTTP/1.1 401")
    assert raw_exchange(gw.url, head).startswith(b"HTTP/1.1 401")
    assert request("GET", gw.url + "/echo", headers=auth()).status == 403


def test_a_compressed_request_body_is_forwarded_decoded_and_labelled_so(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream))
    body = gzip.compress(b'{"zipped": true}')
    got = request("POST", gw.url + "/echo", headers=auth(**{"Content-Encoding": "gzip"}), body=body).json()
    assert got["body"] == '{"zipped": true}'
    assert "content-encoding" not in {k.lower() for k in got["headers"]}


def test_a_broken_request_body_is_a_400(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream))
    reply = request("POST", gw.url + "/echo", headers=auth(**{"Content-Encoding": "gzip"}), body=b"not gzip at all")
    assert reply.status == 400
    assert reply.json()["error"]["message"].startswith("the request body cannot be read")


def test_redirects_to_another_origin_drop_the_target_key(gateway: Any, echo_upstream: str, bg: Any) -> None:
    from .conftest import serve_app
    from .upstreams import echo_app

    runner, elsewhere = bg.run(serve_app(echo_app()))  # same host, another port: another origin
    try:
        gw = gateway(passthrough_config(echo_upstream, {"/redirect/307": None}, key="target-secret"))
        moved = request("GET", gw.url + f"/redirect/307?to={elsewhere}/echo/elsewhere", headers=auth()).json()
        assert moved["path"] == "/echo/elsewhere"
        assert "Authorization" not in moved["headers"]
        same = request("GET", gw.url + "/redirect/307?to=/echo/here", headers=auth()).json()
        assert same["headers"]["Authorization"] == "Bearer target-secret"
        bad = request("GET", gw.url + "/redirect/307?to=http://[::1", headers=auth())
        assert bad.status == 502 and "invalid location" in bad.json()["error"]["message"]
    finally:
        bg.run(runner.cleanup())


def test_streams_ask_the_upstream_for_uncompressed_bytes(gateway: Any, echo_upstream: str) -> None:
    entry = {"in": "tests.plugins_example:stream_request", "out": "tests.plugins_example:upper_stream"}
    gw = gateway(passthrough_config(echo_upstream, {"/words": entry}))
    reply = request("POST", gw.url + "/words?say=ok&accept", headers=auth(**{"Accept-Encoding": "gzip"}), body={})
    assert reply.body == b"IDENTITY OK [END]"


def test_upstream_cors_headers_never_override_the_gateway_policy(gateway: Any, echo_upstream: str) -> None:
    config = passthrough_config(echo_upstream, {"/cors": None})
    config["system"] = {"cors": ["https://app.example"]}
    gw = gateway(config)
    evil = request("GET", gw.url + "/cors", headers=auth(Origin="https://evil.example"))
    assert evil.status == 200
    assert "Access-Control-Allow-Origin" not in evil.headers
    assert "Access-Control-Allow-Credentials" not in evil.headers
    good = request("GET", gw.url + "/cors", headers=auth(Origin="https://app.example"))
    assert good.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_debug_logs_never_fail_a_request(gateway: Any, echo_upstream: str) -> None:
    config = passthrough_config(echo_upstream, {"/echo": {"in": "identity"}})
    config["system"] = {"debug": True}
    gw = gateway(config)
    deep = '{"a":' * 300 + "1" + "}" * 300
    reply = request("POST", gw.url + "/echo", headers=auth(**{"Content-Type": "application/json"}), body=deep)
    assert reply.status == 400 and reply.json()["error"]["message"].startswith("the request cannot be forwarded")


def test_models_answers_only_its_own_paths(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream, model="m-1"))
    assert request("GET", gw.url + "/v1/models", headers=auth()).json()["data"][0]["id"] == "m-1"
    assert request("GET", gw.url + "/models/m-1", headers=auth()).json()["id"] == "m-1"
    for path in ("/foo/models/m-1", "/modelsx", "/v2/models"):
        assert request("GET", gw.url + path, headers=auth()).status == 404, path


def test_a_plugin_crash_is_logged_as_a_500(gateway: Any, echo_upstream: str, caplog: pytest.LogCaptureFixture) -> None:
    gw = gateway(passthrough_config(echo_upstream, {"/echo": {"in": "tests.plugins_example:crash"}}))
    with caplog.at_level(logging.INFO, logger="mooltiproxy.access"):
        assert request("POST", gw.url + "/echo", headers=auth(), body={}).status == 500
    lines = [r.getMessage() for r in caplog.records if r.name == "mooltiproxy.access"]
    assert lines and "status=500" in lines[-1]


def test_yaml_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    from mooltiproxy.config import load_config
    from mooltiproxy.errors import ConfigError

    config = tmp_path / "config.yaml"
    config.write_text('system:\n  masterkey: "sk-VERY-SECRET-1234\n  port: 8000\n')
    with pytest.raises(ConfigError) as info:
        load_config(config, {})
    assert "sk-VERY-SECRET" not in str(info.value)
    assert "not valid YAML at line" in str(info.value)


def test_address_lists_are_checked_even_when_the_section_has_other_errors() -> None:
    from mooltiproxy.config import build_settings
    from mooltiproxy.errors import ConfigError

    raw = {
        "system": {"nope": 1, "trusted_proxies": ["bad-proxy"]},
        "cerbere": {"max_tries": "many", "blacklist": ["bad-ip"]},
        "targets": {"default": "t", "t": {"url": "http://x", "mapping": {}}},
    }
    with pytest.raises(ConfigError) as info:
        build_settings(raw, {"MOOLTIPROXY_KEY": "k" * 12}, base_dir=Path("."), source="t")
    problems = info.value.problems
    assert "system.trusted_proxies.0: 'bad-proxy' is not an IP address or CIDR range" in problems
    assert "cerbere.blacklist.0: 'bad-ip' is not an IP address or CIDR range" in problems
