"""The gateway's side of the Anthropic front-end: the key as ``x-api-key``, errors in Anthropic's shape on its routes
(the guard's included), and ``count_tokens`` answered 501 where the target cannot count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .conftest import Gateway
from .http import request

MESSAGE = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def anthropic_target(url: str) -> dict[str, Any]:
    return {"targets": {"default": "up", "up": {"url": url, "mapping": {"/echo": None}}}}


def test_x_api_key_is_the_key(gateway: Callable[..., Gateway], echo_upstream: str) -> None:
    gw = gateway(anthropic_target(echo_upstream))
    ok = request("POST", gw.url + "/echo", headers={"x-api-key": gw.key}, body={})
    assert ok.status == 200
    assert "x-api-key" not in {k.lower() for k in ok.json()["headers"]}  # the master key never goes upstream
    wrong = request("POST", gw.url + "/echo", headers={"x-api-key": "not-the-key"}, body={})
    assert (
        wrong.status == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    )  # OpenAI shape off Anthropic routes


def test_errors_on_messages_routes_are_anthropic_shaped(gateway: Callable[..., Gateway], echo_upstream: str) -> None:
    gw = gateway(anthropic_target(echo_upstream))
    missing = request("POST", gw.url + "/v1/messages", body=MESSAGE)
    assert missing.status == 401
    assert missing.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": missing.json()["error"]["message"]},
    }
    unmapped = request("POST", gw.url + "/v1/messages", headers={"x-api-key": gw.key}, body=MESSAGE)
    assert unmapped.status == 404
    assert unmapped.json()["type"] == "error" and unmapped.json()["error"]["type"] == "not_found_error"


def test_count_tokens_without_a_counting_route_is_a_clear_501(
    gateway: Callable[..., Gateway], echo_upstream: str
) -> None:
    gw = gateway(anthropic_target(echo_upstream))
    reply = request("POST", gw.url + "/v1/messages/count_tokens", headers={"x-api-key": gw.key}, body=MESSAGE)
    assert reply.status == 501
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "cannot count tokens" in body["error"]["message"]
