"""Streaming through the real gateway: framing, old-TGI framing, byte-split upstream events, client disconnects."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from .conftest import KEY, BackgroundLoop
from .http import request
from .test_openai_e2e import say, tgi_config


@pytest.fixture(scope="module")
def old_tgi(bg: BackgroundLoop) -> Iterator[str]:
    """A TGI ≤ 2.0 look-alike (``data:`` without a space) that also cuts its output every 7 bytes."""
    from mooltiproxy.tgisim import SimSettings, start_simulator

    runner, url = bg.run(start_simulator(SimSettings(data_prefix="data:", chunking="bytes:7", keepalive=0.05)))
    yield url
    bg.run(runner.cleanup())


def test_sse_framing_seen_by_a_raw_client(gateway: Any, tgi: str) -> None:
    gw = gateway(tgi_config(tgi))
    body = {"model": "m", "messages": say("é 漢字 ok"), "stream": True}
    reply = request("POST", gw.url + "/chat/completions", headers=gw.headers(), body=body)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = reply.body.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    chunks = [orjson.loads(e[len(b"data: ") :]) for e in events[:-2]]
    assert all(e.startswith(b"data: ") for e in events[:-1])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "é 漢字 ok"
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


def test_old_tgi_framing_split_events_and_keepalives(gateway: Any, old_tgi: str) -> None:
    gw = gateway(tgi_config(old_tgi))
    client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
    text = "Ünïcödé — split 🎉 across reads, with keep-alives"
    stream = client.chat.completions.create(model="m", messages=say(text) + [], stream=True, stop=["NEVER"])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    legacy = client.completions.create(model="m", prompt=f"<<say:{text}>><<delay:60>>", stream=True, max_tokens=50)
    assert "".join(c.choices[0].text for c in legacy if c.choices) == text


def test_tokens_arrive_as_they_are_generated(gateway: Any, tgi: str) -> None:
    gw = gateway(tgi_config(tgi))
    client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "<<tokens:10>><<delay:150>>"}], stream=True
    )
    arrivals = [time.monotonic() - started for c in stream if c.choices and c.choices[0].delta.content]
    assert len(arrivals) == 10
    assert arrivals[0] < 0.8  # the first token is not held until the end (~1.5 s)
    assert arrivals[-1] - arrivals[0] > 1.0


def in_flight(tgi_url: str) -> int:
    metrics = request("GET", tgi_url + "/metrics").body.decode()
    found = re.search(r"^tgi_batch_current_size (\d+)$", metrics, re.M)
    assert found is not None
    return int(found.group(1))


def test_client_disconnect_closes_the_upstream_request(gateway: Any, tgi: str) -> None:
    gw = gateway(tgi_config(tgi))
    port = int(gw.url.rsplit(":", 1)[1])
    body = orjson.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "<<tokens:100>><<delay:1000>>"}]}
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    baseline = in_flight(tgi)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        assert b"200 OK" in sock.recv(4096)
        assert in_flight(tgi) == baseline + 1
    # The next token is 1 s away: only a cancelled handler frees the upstream slot before it.
    deadline = time.monotonic() + 0.5
    while in_flight(tgi) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(tgi) == baseline


def test_timeout_bounds_the_wait_between_stream_chunks(gateway: Any, tgi: str) -> None:
    gw = gateway(tgi_config(tgi, timeout=0.6))
    client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:  # no token within 0.6 s: 504 before the stream starts
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "<<tokens:3>><<delay:1500>>"}], stream=True
        )
    assert info.value.status_code == 504
    assert "did not answer within 0.6 s" in info.value.message
    fast = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "<<tokens:8>><<delay:150>>"}], stream=True
    )
    # 1.2 s in all, twice the timeout, but never 0.6 s without a chunk
    assert len([c for c in fast if c.choices and c.choices[0].delta.content]) == 8


def test_a_stream_cut_short_is_an_error_never_a_silent_stop(gateway: Any, echo_upstream: str) -> None:
    entry = {"path": "/tgi_cut", "stream_path": "/tgi_cut", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI"}
    entry["template"] = "chatml"
    gw = gateway({"targets": {"default": "t", "t": {"url": echo_upstream, "mapping": {"/chat/completions": entry}}}})
    client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            seen.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in seen if c.choices) == "Half"
    assert not any(c.choices and c.choices[0].finish_reason for c in seen)
    assert "ended before the generation finished" in info.value.message
