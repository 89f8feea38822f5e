"""Hostile bodies: too large (declared or not), nested too deep, numbers too big, broken text. Each is a 4xx in
the route's own error shape, the target receives nothing it cannot take, and the gateway keeps serving."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ..conftest import KEY
from .conftest import Recorder
from .wire import answers, exchange, get, one_answer, port_of

CHAT = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
MESSAGES = {
    "path": "/generate",
    "in": "messagesReqAnthropicToTGI",
    "out": "messagesAnsTGItoAnthropic",
    "template": "chatml",
}


@pytest.fixture
def gw(gateway: Any, recorder: Recorder, tgi: str) -> Any:
    return gateway(
        {
            "system": {"max_body_size": 64 * 1024},
            "targets": {
                "default": "tgi",
                "tgi": {"url": tgi, "mapping": {"/v1/chat/completions": CHAT, "/v1/messages": MESSAGES}},
                "rec": {"url": recorder.url, "mapping": {"/echo": None}},
            },
        }
    )


def post(path: str, body: bytes, *extra: str) -> bytes:
    return get(path, KEY, "Content-Type: application/json", *extra, method="POST", body=body)


def chat(content: str) -> bytes:
    return b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":' + content.encode() + b"}]}"


def still_serves(gw: Any) -> None:
    answer = one_answer(gw.url, post("/v1/chat/completions", chat('"hello"')))
    assert answer.status == 200, answer.body
    assert answer.json()["object"] == "chat.completion"


def test_a_declared_length_over_the_limit_is_a_413_before_the_body_is_read(gw: Any, recorder: Recorder) -> None:
    head = f"POST /echo HTTP/1.1\r\nHost: g\r\ntarget: rec\r\nAuthorization: Bearer {KEY}\r\n"
    head += f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
    received, closed = exchange(gw.url, head.encode() + b"x" * 1000)  # 1000 of the 10 MiB announced, then silence
    answer = answers(received)[0]
    assert (answer.status, answer.error()["code"]) == (413, "payload_too_large")
    assert recorder.seen == []
    still_serves(gw)


def test_a_chunked_body_that_grows_over_the_limit_is_a_413(gw: Any, recorder: Recorder) -> None:
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    head = f"POST /echo HTTP/1.1\r\nHost: g\r\ntarget: rec\r\nAuthorization: Bearer {KEY}\r\n"
    head += "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port_of(gw.url)), timeout=5) as sock:
        sock.sendall(head.encode())
        received = b""
        try:
            for _ in range(64):  # 1 MiB, far past the 64 KiB limit, unless the gateway answers and hangs up first
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while data := sock.recv(65536):
                received += data
        except (TimeoutError, ConnectionResetError):
            pass
    answer = answers(received)[0]
    assert (answer.status, answer.error()["code"]) == (413, "payload_too_large")
    assert recorder.seen == []
    still_serves(gw)


BAD_CHAT = {
    "nested 30,000 deep": b"[" * 30_000 + b"]" * 30_000,
    "content nested 1,000 deep": chat("[" * 1000 + "]" * 1000),
    "content object nested 300 deep": chat('{"a":' * 300 + "1" + "}" * 300),
    "integer over 64 bits": b'{"model":"m","max_tokens":123456789012345678901234567890,"messages":[]}',
    "float overflowing": b'{"model":"m","temperature":1e999,"messages":[{"role":"user","content":"hi"}]}',
    "NaN": b'{"model":"m","temperature":NaN,"messages":[{"role":"user","content":"hi"}]}',
    "lone surrogate": chat('"\\ud800 alone"'),
    "reversed surrogates": chat('"\\udc00\\ud800"'),
    "not UTF-8": b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"caf\xe9"}]}',
    "UTF-8 BOM": b"\xef\xbb\xbf" + chat('"hi"'),
    "empty": b"",
    "not JSON": b"model=m&messages=hi",
    "a JSON string": b'"just a string"',
    "duplicate keys, the last one hostile": b'{"model":"m","messages":[],"messages":{"x":1}}',
}


@pytest.mark.parametrize("body", BAD_CHAT.values(), ids=BAD_CHAT.keys())
def test_a_hostile_chat_body_is_a_400_in_openai_shape(gw: Any, body: bytes) -> None:
    answer = one_answer(gw.url, post("/v1/chat/completions", body))
    assert answer.status == 400, answer.body
    assert answer.error()["type"] == "invalid_request_error"
    still_serves(gw)


@pytest.mark.parametrize("body", list(BAD_CHAT.values())[:8], ids=list(BAD_CHAT)[:8])
def test_a_hostile_messages_body_is_a_400_in_anthropic_shape(gw: Any, body: bytes) -> None:
    answer = one_answer(gw.url, post("/v1/messages", body, "anthropic-version: 2023-06-01"))
    assert answer.status == 400, answer.body
    got = answer.json()
    assert got["type"] == "error" and got["error"]["type"] == "invalid_request_error"
    still_serves(gw)


@pytest.mark.parametrize("value", ["2147483648", "9223372036854775807", "-1", "0", "1e9", "true", '"5"'])
def test_an_odd_max_tokens_is_served_or_refused_never_a_5xx(gw: Any, value: str) -> None:
    body = f'{{"model":"m","max_tokens":{value},"messages":[{{"role":"user","content":"hi"}}]}}'.encode()
    answer = one_answer(gw.url, post("/v1/chat/completions", body))
    assert answer.status < 500, answer.body
    if answer.status >= 400:
        answer.error()
    else:  # TGI generates in chunks: a budget it cannot reach is no error
        assert answer.json()["object"] == "chat.completion"
