"""Routing and forwarding through the real gateway to a real local upstream, with a raw HTTP client."""

from __future__ import annotations

import gzip
import os
from typing import Any

import pytest

from .conftest import KEY, passthrough_config
from .http import request


def auth(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", **extra}


def assert_openai_error(reply: Any, status: int, needle: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in error["message"]
    return dict(error)


@pytest.fixture
def two_targets(gateway: Any, echo_upstream: str) -> Any:
    config = {
        "targets": {
            "default": "first",
            "first": {
                "url": echo_upstream,
                "key": "first-secret",
                "mapping": {"/echo": None, "/chat/completions": None},
            },
            "second": {
                "url": echo_upstream + "/",
                "mapping": {
                    "/masked": "/echo/real/path",
                    "/only-get": {"path": "/echo", "methods": ["GET"]},
                    "/status/418": None,
                    "/status/422": None,
                },
            },
        }
    }
    return gateway(config)


def test_default_target_and_header_picks_target(two_targets: Any) -> None:
    first = request("POST", two_targets.url + "/echo", headers=auth(), body={"a": 1}).json()
    assert first["path"] == "/echo"
    assert first["headers"]["Authorization"] == "Bearer first-secret"  # the target's own key, not ours
    second = request("GET", two_targets.url + "/masked", headers=auth(TARGET="second")).json()
    assert second["path"] == "/echo/real/path"  # masqueraded path
    assert "Authorization" not in second["headers"]  # our master key is never forwarded
    assert "target" not in {k.lower() for k in second["headers"]}


def test_unknown_target_and_unmapped_path_are_openai_404s(two_targets: Any) -> None:
    error = assert_openai_error(request("GET", two_targets.url + "/echo", headers=auth(target="nope")), 404, "nope")
    assert error["code"] == "unknown_target"
    error = assert_openai_error(request("GET", two_targets.url + "/secret", headers=auth()), 404, "/secret")
    assert error["code"] == "unknown_route"


def test_v1_prefix_is_optional_and_query_is_forwarded(two_targets: Any) -> None:
    got = request("POST", two_targets.url + "/v1/chat/completions?api-version=2&x=%20y", headers=auth(), body={})
    assert got.status == 200
    data = got.json()
    assert data["path"] == "/chat/completions"
    assert data["query"] == "api-version=2&x=%20y"


def test_method_restriction_gives_405_with_allow(two_targets: Any) -> None:
    reply = request("POST", two_targets.url + "/only-get", headers=auth(target="second"), body={})
    assert_openai_error(reply, 405, "POST")
    assert reply.headers["Allow"] == "GET"
    assert request("GET", two_targets.url + "/only-get", headers=auth(target="second")).status == 200


def test_upstream_error_status_and_body_pass_through(two_targets: Any) -> None:
    reply = request("POST", two_targets.url + "/status/422", headers=auth(target="second"), body={})
    assert reply.status == 422
    assert reply.json() == {"error": "upstream says 422", "error_type": "test"}
    assert request("GET", two_targets.url + "/status/418", headers=auth(target="second")).status == 418


def test_hop_by_hop_headers_are_not_forwarded(two_targets: Any) -> None:
    headers = auth(
        **{"Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic x", "X-Custom": "kept", "TE": "trailers"}
    )
    got = request("POST", two_targets.url + "/echo", headers=headers, body={}).json()["headers"]
    lowered = {k.lower(): v for k, v in got.items()}
    assert "keep-alive" not in lowered and "proxy-authorization" not in lowered and "te" not in lowered
    assert lowered["x-custom"] == "kept"


def test_unreachable_upstream_is_502(gateway: Any) -> None:
    gw = gateway(passthrough_config("http://127.0.0.1:9"))
    error = assert_openai_error(request("GET", gw.url + "/echo", headers=auth()), 502, "unreachable")
    assert error["type"] == "upstream_error"


def test_upstream_timeout_is_504(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream, {"/slow": None}, timeout=0.3))
    reply = request("GET", gw.url + "/slow?seconds=2", headers=auth())
    assert_openai_error(reply, 504, "did not answer within 0.3 s")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_keep_method_and_body_with_preserve_method(gateway: Any, echo_upstream: str, code: int) -> None:
    gw = gateway(passthrough_config(echo_upstream, {f"/redirect/{code}": None}, preserveMethod=True))
    got = request("POST", gw.url + f"/redirect/{code}?to=/echo/moved", headers=auth(), body={"keep": "me"}).json()
    assert (got["method"], got["path"], got["body"]) == ("POST", "/echo/moved", '{"keep":"me"}')


@pytest.mark.parametrize(("code", "method"), [(301, "GET"), (302, "GET"), (303, "GET"), (307, "POST"), (308, "POST")])
def test_redirects_follow_http_rules_without_preserve_method(
    gateway: Any, echo_upstream: str, code: int, method: str
) -> None:
    gw = gateway(passthrough_config(echo_upstream, {f"/redirect/{code}": None}))
    got = request("POST", gw.url + f"/redirect/{code}?to=/echo/moved", headers=auth(), body={"keep": "me"}).json()
    assert (got["method"], got["path"]) == (method, "/echo/moved")
    assert got["body"] == ("" if method == "GET" else '{"keep":"me"}')


def test_redirect_loops_are_bounded(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream, {"/redirect/307": None}))
    reply = request("GET", gw.url + "/redirect/307?loop", headers=auth())
    assert_openai_error(reply, 502, "redirected more than 5 times")


def test_compressed_body_untouched_without_mapper_decoded_with_one(gateway: Any, echo_upstream: str) -> None:
    mapping = {"/gzip": None, "/mapped-gzip": {"path": "/gzip", "out": "tests.plugins_example:wrap_answer"}}
    gw = gateway(passthrough_config(echo_upstream, mapping))
    raw = request("GET", gw.url + "/gzip", headers=auth(**{"Accept-Encoding": "gzip"}))
    assert raw.headers["Content-Encoding"] == "gzip"
    assert int(raw.headers["Content-Length"]) == len(raw.body)
    assert gzip.decompress(raw.body).startswith(b'{"compressed":true')
    mapped = request("GET", gw.url + "/mapped-gzip", headers=auth())
    assert "Content-Encoding" not in mapped.headers
    assert mapped.json()["wrapped"]["compressed"] is True
    assert int(mapped.headers["Content-Length"]) == len(mapped.body)


def test_mapper_runs_on_json_with_charset_parameter(gateway: Any, echo_upstream: str) -> None:
    mapping = {"/echo": {"in": "tests.plugins_example:add_field", "path": "/echo/in"}}
    gw = gateway(passthrough_config(echo_upstream, mapping))
    body = b'{"x": 1}'
    got = request(
        "POST", gw.url + "/echo", headers=auth(**{"Content-Type": "application/json; charset=utf-8"}), body=body
    )
    import orjson

    sent = orjson.loads(got.json()["body"])
    assert sent == {"x": 1, "mapped_by": "add_field", "entry_path": "/echo/in"}
    assert got.json()["headers"]["Content-Length"] == str(len(got.json()["body"]))


def test_bad_inputs_get_clear_errors_and_gateway_keeps_serving(gateway: Any, echo_upstream: str) -> None:
    mapping = {"/echo": {"in": "identity"}}
    config = passthrough_config(echo_upstream, mapping)
    config["system"] = {"max_body_size": 1000}
    gw = gateway(config)
    bad_json = request("POST", gw.url + "/echo", headers=auth(**{"Content-Type": "application/json"}), body="{nope")
    assert_openai_error(bad_json, 400, "not valid JSON")
    wrong_type = request("POST", gw.url + "/echo", headers=auth(**{"Content-Type": "text/plain"}), body="hi")
    assert_openai_error(wrong_type, 415, "application/json")
    too_big = request("POST", gw.url + "/echo", headers=auth(), body={"x": "y" * 2000})
    assert_openai_error(too_big, 413, "larger than 1000 bytes")
    assert request("POST", gw.url + "/echo", headers=auth(), body={"fine": True}).status == 200


def test_streamed_pass_through_arrives_incrementally(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream, {"/sse": None}))
    reply = request("GET", gw.url + "/sse", headers=auth())
    assert reply.status == 200
    assert reply.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert reply.headers["Content-Type"] == "text/event-stream"


def test_health_needs_no_key(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream))
    reply = request("GET", gw.url + "/-/health")
    assert (reply.status, reply.json()) == (200, {"status": "ok", "pid": os.getpid()})  # served in this process
    assert reply.headers["Server"] == "mooltiproxy"  # no library or Python version for scanners


def test_cors_preflight_and_headers(gateway: Any, echo_upstream: str) -> None:
    config = passthrough_config(echo_upstream)
    config["system"] = {"cors": ["https://app.example"]}
    gw = gateway(config)
    pre = request(
        "OPTIONS",
        gw.url + "/echo",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, target",
        },
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "authorization, content-type, target"
    denied = request("OPTIONS", gw.url + "/echo", headers={"Origin": "https://evil.example"})
    assert denied.status == 403 and "Access-Control-Allow-Origin" not in denied.headers
    actual = request("POST", gw.url + "/echo", headers=auth(Origin="https://app.example"), body={})
    assert actual.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in actual.headers.get("Vary", "")
    error = request("POST", gw.url + "/nowhere", headers=auth(Origin="https://app.example"), body={})
    assert error.headers["Access-Control-Allow-Origin"] == "https://app.example"  # a browser can read the error


def test_any_origin_by_default(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream))
    reply = request("GET", gw.url + "/echo", headers=auth(Origin="http://localhost:3000"))
    assert reply.headers["Access-Control-Allow-Origin"] == "*"


def test_chunked_bodies_are_bounded_too(gateway: Any, echo_upstream: str) -> None:
    import socket

    config = passthrough_config(echo_upstream)
    config["system"] = {"max_body_size": 1000}
    gw = gateway(config)
    port = int(gw.url.rsplit(":", 1)[1])
    head = (
        f"POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 600
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"the request body is larger than 1000 bytes" in answer
