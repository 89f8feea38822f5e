"""The OpenAI-compatible test upstream itself, driven by the official ``openai`` SDK pointed straight at it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from .conftest import BackgroundLoop
from .http import request
from .openai_answers import answer, pieces
from .openai_upstream import OpenAIUpstream

Start = Callable[..., OpenAIUpstream]
#: a connection dropped mid-stream, as the SDK reports it (wrapped since openai 2.x, the httpx error before)
CUT = (openai.APIConnectionError, httpx.TransportError)


def said(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


USER = said("Hello there, how are you?")


_clients: list[OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(upstream: OpenAIUpstream, key: str = "unused", retries: int = 0) -> OpenAI:
    made = OpenAI(base_url=upstream.url, api_key=key, max_retries=retries, timeout=10)
    _clients.append(made)
    return made


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# ------------------------------------------------------------------------------------------------------- chat


def test_chat_answers_with_the_replica_name_and_the_user_text(openai_upstreams: Start) -> None:
    up = openai_upstreams("r1", ["m1", "m2"])
    raw = client(up).chat.completions.with_raw_response.create(model="m2", messages=USER)
    assert raw.headers["x-replica"] == "r1"
    done = raw.parse()
    assert done.id.startswith("chatcmpl-") and done.object == "chat.completion" and done.model == "m2"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == "r1 says: Hello there, how are you?"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (5, 7, 12)
    assert up.calls["POST /v1/chat/completions"] == 1
    seen = up.received[-1]
    assert seen["method"] == "POST" and seen["path"] == "/v1/chat/completions"
    assert seen["json"]["messages"] == USER and seen["headers"]["authorization"] == "Bearer unused"


def test_replicas_can_be_told_apart_and_content_parts_are_read(openai_upstreams: Start) -> None:
    a, b = openai_upstreams("a"), openai_upstreams("b")
    parts: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
    ]
    for up in (a, b):
        done = client(up).chat.completions.create(model="test-model", messages=parts)
        assert done.choices[0].message.content == f"{up.name} says: one two"


@pytest.mark.parametrize(
    ("content", "extra", "text", "finish"),
    [
        ("<<say:Paris is the capital.>>", {}, "Paris is the capital.", "stop"),
        ("<<tokens:5>>", {}, "w1 w2 w3 w4 w5", "stop"),
        ("<<tokens:5>>", {"max_tokens": 3}, "w1 w2 w3", "length"),
        ("<<tokens:5>>", {"max_completion_tokens": 2}, "w1 w2", "length"),
        ("<<tokens:5>>", {"stop": " w4"}, "w1 w2 w3", "stop"),
        ("<<say:a.b.c>>", {"stop": [".c", "."]}, "a", "stop"),
    ],
)
def test_directives_and_limits_steer_the_answer(
    openai_upstreams: Start, content: str, extra: dict[str, object], text: str, finish: str
) -> None:
    up = openai_upstreams("r")
    messages = said(content)
    done = client(up).chat.completions.create(model="test-model", messages=messages, extra_body=extra)
    assert done.choices[0].message.content == text
    assert done.choices[0].finish_reason == finish


def test_delay_holds_the_answer(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    started = time.perf_counter()
    messages = said("hi <<delay:300>>")
    done = client(up).chat.completions.create(model="test-model", messages=messages)
    assert time.perf_counter() - started >= 0.3
    assert done.choices[0].message.content == "r says: hi"


def test_stream_with_usage(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    messages = said("<<say:The sky is blue.>>")
    chunks = list(
        client(up).chat.completions.create(
            model="test-model",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and {c.object for c in chunks} == {"chat.completion.chunk"}
    first, *middle, final, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in middle] == ["The", " sky", " is", " blue."]
    assert final.choices[0].finish_reason == "stop" and final.choices[0].delta.content is None
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 4


def test_stream_framing_is_openais(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    body = {"model": "test-model", "messages": [{"role": "user", "content": "<<tokens:2>>"}], "stream": True}
    reply = request("POST", up.url + "/chat/completions", body=body)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    events = reply.body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2]) and len(payloads) == 4
    assert all("usage" not in p for p in payloads)  # no include_usage: no usage key at all
    assert [p["choices"][0]["delta"] for p in payloads] == [
        {"role": "assistant", "content": ""},
        {"content": "w1"},
        {"content": " w2"},
        {},
    ]


def test_tool_calls(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    content = 'weather? <<tool:get_weather:{"city": "Paris", "unit": "c"}>> <<tool:get_time:{"tz": "CET"}>>'
    messages = said(content)
    done = client(up).chat.completions.create(model="test-model", messages=messages)
    message = done.choices[0].message
    assert done.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls is not None
    dumped = [c.model_dump() for c in message.tool_calls]
    calls = [(d["type"], d["function"]["name"], json.loads(d["function"]["arguments"])) for d in dumped]
    assert calls == [
        ("function", "get_weather", {"city": "Paris", "unit": "c"}),
        ("function", "get_time", {"tz": "CET"}),
    ]
    assert all(c.id.startswith("call_") for c in message.tool_calls)


def test_tool_calls_streamed(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    content = '<<tool:get_weather:{"city": "Paris"}>><<tool:get_time:{}>>'
    stream = client(up).chat.completions.create(
        model="test-model",
        messages=said(content),
        stream=True,
    )
    deltas = [d for c in stream for d in c.choices[0].delta.tool_calls or []]
    starts = [d for d in deltas if d.id is not None]
    assert [(d.index, d.type, d.function and d.function.name, d.function and d.function.arguments) for d in starts] == [
        (0, "function", "get_weather", ""),
        (1, "function", "get_time", ""),
    ]
    pieces_0 = [d.function.arguments for d in deltas if d.index == 0 and d.id is None and d.function]
    assert len(pieces_0) >= 2 and json.loads("".join(p or "" for p in pieces_0)) == {"city": "Paris"}
    assert all(d.function and d.function.name is None and d.type is None for d in deltas if d.id is None)


def test_stream_error_and_cut(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    sdk = client(up)
    got: list[str] = []
    with pytest.raises(openai.APIError, match="simulated failure"):
        for chunk in sdk.chat.completions.create(
            model="test-model", messages=said("<<tokens:9>><<error_after:3>>"), stream=True
        ):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "w1 w2 w3"
    got.clear()
    with pytest.raises(CUT):
        for chunk in sdk.chat.completions.create(
            model="test-model", messages=said("<<tokens:9>><<cut_after:2>>"), stream=True
        ):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "w1 w2"
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="test-model", messages=said("<<cut_after:0>>"))
    with pytest.raises(openai.InternalServerError, match="simulated failure"):
        sdk.chat.completions.create(model="test-model", messages=said("<<error_after:0>>"))


# --------------------------------------------------------------------------------- completions, embeddings, models


def test_legacy_completions(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    sdk = client(up)
    done = sdk.completions.create(model="test-model", prompt="Once upon a time")
    assert done.id.startswith("cmpl-") and done.object == "text_completion"
    assert done.choices[0].text == "r says: Once upon a time" and done.choices[0].finish_reason == "stop"
    many = sdk.completions.create(model="test-model", prompt=["<<tokens:40>>", "<<say:x y z>>"], max_tokens=2)
    assert [(c.index, c.text, c.finish_reason) for c in many.choices] == [(0, "w1 w2", "length"), (1, "x y", "length")]
    default_limit = sdk.completions.create(model="test-model", prompt="<<tokens:40>>")
    assert default_limit.usage is not None and default_limit.usage.completion_tokens == 16  # OpenAI's default
    chunks = list(
        sdk.completions.create(
            model="test-model", prompt="<<say:a b c>>", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "a b c"
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage is not None


def test_embeddings(openai_upstreams: Start) -> None:
    up = openai_upstreams("r", ["embedder"])
    sdk = client(up)
    done = sdk.embeddings.create(model="embedder", input=["alpha", "beta", "alpha"])  # the SDK asks for base64
    assert up.received[-1]["json"]["encoding_format"] == "base64"
    vectors = [d.embedding for d in done.data]
    assert [len(v) for v in vectors] == [8, 8, 8] and vectors[0] == pytest.approx(vectors[2])
    assert vectors[0] != pytest.approx(vectors[1])
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-4)
    floats = sdk.embeddings.create(model="embedder", input="alpha", encoding_format="float", dimensions=4)
    assert len(floats.data[0].embedding) == 4 and floats.usage.prompt_tokens == 1


def test_models(openai_upstreams: Start) -> None:
    up = openai_upstreams("r", ["m1", "org/m2"])
    sdk = client(up)
    assert [(m.id, m.object) for m in sdk.models.list()] == [("m1", "model"), ("org/m2", "model")]
    assert sdk.models.retrieve("org/m2").id == "org/m2"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nope")


# ------------------------------------------------------------------------------------------------------ errors


def test_unknown_model_is_vllms_not_found(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    with pytest.raises(openai.NotFoundError) as caught:
        client(up).chat.completions.create(model="gpt-x", messages=USER)
    assert caught.value.body == {
        "message": "The model `gpt-x` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": USER}, "model"),
        ({"model": "test-model"}, "messages"),
        ({"model": "test-model", "messages": []}, "messages"),
        ({"model": "test-model", "messages": ["hi"]}, "messages"),
        ({"model": "test-model", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "test-model", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "test-model", "messages": USER, "stop": [1]}, "stop"),
        ({"model": "test-model", "messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_requests_get_a_400(openai_upstreams: Start, body: bytes | dict[str, object], param: str | None) -> None:
    up = openai_upstreams("r")
    reply = request("POST", up.url + "/chat/completions", body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400 and error["param"] == param
    assert error["message"] and reply.headers["X-Replica"] == "r"


def test_unknown_routes_answer_like_vllm(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    assert request("GET", up.url + "/nothing").json() == {"detail": "Not Found"}
    assert request("POST", up.origin + "/chat/completions", body={}).status == 404  # only under /v1
    wrong = request("DELETE", up.url + "/models")
    assert wrong.status == 405 and wrong.headers["X-Replica"] == "r"


def test_api_key(openai_upstreams: Start) -> None:
    up = openai_upstreams("secure", api_key="sk-right")
    with pytest.raises(openai.AuthenticationError):
        client(up, "sk-wrong").models.list()
    assert request("GET", up.url + "/models").status == 401
    assert [m.id for m in client(up, "sk-right").models.list()] == ["test-model"]
    assert request("GET", up.origin + "/health").status == 200  # not under /v1


def test_fail_next(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    up.fail_next(1, 503, retry_after=1)
    with pytest.raises(openai.InternalServerError) as caught:
        client(up).chat.completions.create(model="test-model", messages=USER)
    assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == 503
    assert client(up).chat.completions.create(model="test-model", messages=USER).choices
    assert up.calls["POST /v1/chat/completions"] == 2
    up.fail_next(2, 429, body={"error": {"message": "slow down", "type": "rate_limit", "param": None, "code": None}})
    for _ in range(2):
        with pytest.raises(openai.RateLimitError, match="slow down"):
            client(up).embeddings.create(model="test-model", input="x")
    assert request("GET", up.url + "/models").status == 200  # only POSTs fail
    up.fail_next(1, 502, retry_after=0.5)
    started = time.perf_counter()
    done = client(up, retries=1).chat.completions.create(model="test-model", messages=USER)
    assert done.choices and time.perf_counter() - started >= 0.45  # the SDK waited as told, then retried
    assert up.calls["POST /v1/chat/completions"] == 4


def test_health_and_reset(openai_upstreams: Start) -> None:
    up = openai_upstreams("r")
    assert request("GET", up.origin + "/health").status == 200
    up.healthy = False
    unhealthy = request("GET", up.origin + "/health")
    assert unhealthy.status == 503 and unhealthy.headers["X-Replica"] == "r"
    up.fail_next(3)
    up.reset()
    assert up.healthy and not up.calls and not up.received
    assert client(up).chat.completions.create(model="test-model", messages=USER).choices


# ------------------------------------------------------------------------------------------------ stop, restart


def test_stop_refuses_connections_and_restart_serves_again(openai_upstreams: Start, bg: BackgroundLoop) -> None:
    up = openai_upstreams("r")
    port, url = up.port, up.url
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # an open keep-alive connection
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    bg.run(up.stop())
    assert idle.recv(65536) == b""  # closed by the kill, not left open
    idle.close()
    assert refused(port)
    with pytest.raises(openai.APIConnectionError):
        client(up).models.list()
    bg.run(up.restart())
    assert up.port == port and up.url == url
    assert client(up).chat.completions.create(model="test-model", messages=USER).choices
    assert up.calls["GET /v1/models"] == 0 and up.calls["POST /v1/chat/completions"] == 1


def test_stop_cuts_a_stream_midway(openai_upstreams: Start, bg: BackgroundLoop) -> None:
    up = openai_upstreams("r")
    stream = client(up).chat.completions.create(
        model="test-model", messages=said("<<tokens:50>><<delay:20>>"), stream=True
    )
    got: list[str] = []
    with pytest.raises(CUT):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
            if len(got) == 4:
                bg.run(up.stop())
    assert 4 <= len(got) < 20
    assert refused(up.port)


# ------------------------------------------------------------------------------------------------ pure answers


def test_pieces_add_up_to_the_text() -> None:
    for text in ["", "a", " a  b\nc ", "x says: hello, world!"]:
        assert "".join(pieces(text)) == text
    assert pieces("a b") == ["a", " b"]


def test_answers_count_the_stop_token() -> None:
    cut = answer("r", "<<say:one two three>>", None, ["three"])
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ("one two ", "stop", 3)
    assert answer("r", "<<tokens:0>>", None, []).text == ""
