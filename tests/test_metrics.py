"""``GET /-/metrics``: scraped from the real gateway in front of real upstreams, parsed as Prometheus parses it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mooltiproxy.keys import KeyStore

from .conftest import KEY, BackgroundLoop, Gateway
from .http import request
from .openai_upstream import OpenAIUpstream

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def scrape(url: str, key: str | None = KEY) -> Samples:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    reply = request("GET", url + "/-/metrics", headers=headers)
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("text/plain")
    return parse(reply.body.decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def tgi_config(url: str) -> dict[str, Any]:
    return {
        "targets": {"default": "tgi", "tgi": {"url": url, "mapping": {"/chat/completions": CHAT, "/generate": None}}}
    }


def chat_client(gw: Gateway, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_requests_statuses_and_the_tokens_of_a_translated_chat(gateway: Callable[..., Gateway], tgi: str) -> None:
    gw = gateway(tgi_config(tgi))
    answer = chat_client(gw).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "<<say:Paris is the capital.>>"}]
    )
    assert answer.usage is not None
    assert request("POST", gw.url + "/generate", headers=gw.headers(), body={"inputs": "hi"}).status == 200
    assert request("GET", gw.url + "/secret/path/123", headers=gw.headers()).status == 404
    assert request("GET", gw.url + "/-/health").status == 200

    samples = scrape(gw.url)
    requests = "mooltiproxy_requests_total"
    assert value(samples, requests, target="tgi", route="/chat/completions", status="200") == 1
    assert value(samples, requests, target="tgi", route="/generate", status="200") == 1
    assert value(samples, requests, target="tgi", route="unrouted", status="404") == 1
    assert value(samples, requests, target="-", route="health", status="200") == 1
    assert not any("/secret" in str(labels) for _, labels in samples)  # raw paths never become labels
    assert value(samples, "mooltiproxy_tokens_in_total", target="tgi") == answer.usage.prompt_tokens
    assert value(samples, "mooltiproxy_tokens_out_total", target="tgi") == answer.usage.completion_tokens
    assert value(samples, "mooltiproxy_upstream_seconds_count", target="tgi") == 2
    assert value(samples, "mooltiproxy_gateway_seconds_count", target="tgi") == 2
    added = value(samples, "mooltiproxy_gateway_seconds_sum", target="tgi")
    assert added is not None and 0 < added < 1
    assert value(samples, "mooltiproxy_in_flight_requests") == 1  # the scrape itself
    assert value(samples, "mooltiproxy_in_flight_streams") == 0
    assert value(samples, "mooltiproxy_replica_up", target="tgi", replica=tgi) == 1
    # Counters move: the same chat again adds one request and its tokens.
    chat_client(gw).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "<<say:Paris is the capital.>>"}]
    )
    again = scrape(gw.url)
    assert value(again, requests, target="tgi", route="/chat/completions", status="200") == 2
    assert value(again, "mooltiproxy_tokens_out_total", target="tgi") == 2 * answer.usage.completion_tokens
    assert value(again, requests, target="-", route="metrics", status="200") == 1  # the first scrape


def test_a_stream_is_in_flight_while_it_runs_and_its_tokens_are_counted(
    gateway: Callable[..., Gateway], tgi: str
) -> None:
    gw = gateway(tgi_config(tgi))
    stream = chat_client(gw).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "<<delay:150>><<say:one two three four>>"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = iter(stream)
    next(chunks)  # the stream has started
    during = scrape(gw.url)
    rest = list(chunks)
    usage = rest[-1].usage
    assert usage is not None
    after = scrape(gw.url)
    assert value(during, "mooltiproxy_in_flight_streams") == 1
    assert value(during, "mooltiproxy_in_flight_requests") == 2  # the stream and the scrape
    assert value(after, "mooltiproxy_in_flight_streams") == 0
    assert value(after, "mooltiproxy_in_flight_requests") == 1
    assert value(after, "mooltiproxy_requests_total", target="tgi", route="/chat/completions", status="200") == 1
    assert value(after, "mooltiproxy_tokens_in_total", target="tgi") == usage.prompt_tokens
    assert value(after, "mooltiproxy_tokens_out_total", target="tgi") == usage.completion_tokens
    assert value(after, "mooltiproxy_upstream_seconds_count", target="tgi") == 1
    assert not value(after, "mooltiproxy_gateway_seconds_count", target="tgi")  # a stream's total is not ours


def test_auth_failures_and_bans_are_counted(gateway: Callable[..., Gateway], echo_upstream: str) -> None:
    config = {
        "system": {"trusted_proxies": ["127.0.0.1"]},  # so the test can speak for another address
        "cerbere": {"max_tries": 2},
        "targets": {"default": "up", "up": {"url": echo_upstream, "mapping": {"/echo": None}}},
    }
    gw = gateway(config)
    other = {"X-Forwarded-For": "203.0.113.9"}
    assert request("GET", gw.url + "/echo", headers=other).status == 401
    assert request("GET", gw.url + "/echo", headers={**other, "Authorization": "Bearer wrong-key"}).status == 401
    assert request("GET", gw.url + "/echo", headers={**other, "Authorization": f"Bearer {KEY}"}).status == 403
    samples = scrape(gw.url)
    assert value(samples, "mooltiproxy_auth_failures_total", reason="missing") == 1
    assert value(samples, "mooltiproxy_auth_failures_total", reason="invalid") == 1
    assert value(samples, "mooltiproxy_bans_total") == 1
    assert value(samples, "mooltiproxy_requests_total", target="-", route="unrouted", status="403") == 1
    assert "wrong-key" not in str(samples)


def test_replica_health_follows_the_health_checks(
    gateway: Callable[..., Gateway], openai_upstreams: Callable[..., OpenAIUpstream], bg: BackgroundLoop
) -> None:
    a, b = openai_upstreams("a"), openai_upstreams("b")
    target = {"api": "openai", "replicas": [a.url, b.url], "health": {"path": "/health", "interval": 0.1}}
    gw = gateway({"targets": {"default": "llm", "llm": target}})

    def up(samples: Samples, replica: OpenAIUpstream) -> float | None:
        return value(samples, "mooltiproxy_replica_up", target="llm", replica=replica.url.rstrip("/"))

    samples = scrape(gw.url)
    assert up(samples, a) == 1 and up(samples, b) == 1
    bg.run(a.stop())
    deadline = time.monotonic() + 10
    while up(samples, a) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = scrape(gw.url)
    assert up(samples, a) == 0 and up(samples, b) == 1
    bg.run(a.restart())
    deadline = time.monotonic() + 10
    while up(samples, a) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = scrape(gw.url)
    assert up(samples, a) == 1


def test_openai_pass_through_is_counted_without_reading_the_body(
    gateway: Callable[..., Gateway], openai_upstreams: Callable[..., OpenAIUpstream]
) -> None:
    up = openai_upstreams("a")
    gw = gateway({"targets": {"default": "llm", "llm": {"api": "openai", "url": up.url}}})
    chat_client(gw).chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
    samples = scrape(gw.url)
    assert value(samples, "mooltiproxy_requests_total", target="llm", route="/chat/completions", status="200") == 1
    assert value(samples, "mooltiproxy_upstream_seconds_count", target="llm") == 1
    assert not value(samples, "mooltiproxy_tokens_in_total", target="llm")  # a relayed body is not parsed


def test_the_metrics_need_the_master_key(gateway: Callable[..., Gateway], echo_upstream: str, tmp_path: Path) -> None:
    virtual = KeyStore(tmp_path / "keys.db").add("team")
    config = {
        "system": {"keys_db": "keys.db"},
        "targets": {"default": "up", "up": {"url": echo_upstream, "mapping": {"/echo": None}}},
    }
    gw = gateway(config)
    assert request("GET", gw.url + "/-/metrics").status == 401
    assert request("GET", gw.url + "/-/metrics", headers={"Authorization": "Bearer nope-nope"}).status == 401
    refused = request("GET", gw.url + "/-/metrics", headers={"Authorization": f"Bearer {virtual}"})
    assert refused.status == 403 and refused.json()["error"]["code"] == "master_key_required"
    assert request("POST", gw.url + "/echo", headers={"Authorization": f"Bearer {virtual}"}, body={}).status == 200
    samples = scrape(gw.url)
    assert value(samples, "mooltiproxy_auth_failures_total", reason="missing") == 1
    assert value(samples, "mooltiproxy_requests_total", target="-", route="metrics", status="403") == 1


def test_metrics_host_serves_them_without_a_key_on_its_own_listener_only(
    gateway: Callable[..., Gateway], echo_upstream: str
) -> None:
    port = free_port()
    config = {
        "system": {"metrics_host": f"127.0.0.1:{port}"},
        "targets": {"default": "up", "up": {"url": echo_upstream, "mapping": {"/echo": None}}},
    }
    gw = gateway(config)
    assert request("POST", gw.url + "/echo", headers=gw.headers(), body={}).status == 200
    samples = scrape(f"http://127.0.0.1:{port}", key=None)
    assert value(samples, "mooltiproxy_requests_total", target="up", route="/echo", status="200") == 1
    main = request("GET", gw.url + "/-/metrics", headers=gw.headers())
    assert main.status == 404 and main.json()["error"]["type"] == "invalid_request_error"
    assert request("GET", gw.url + "/-/metrics").status == 404
    assert request("GET", f"http://127.0.0.1:{port}/echo").status == 404  # nothing else there


def test_a_wrong_metrics_host_is_a_config_error(gateway: Callable[..., Gateway]) -> None:
    from mooltiproxy.config import build_settings
    from mooltiproxy.errors import ConfigError

    raw = {"system": {"metrics_host": "9100"}, "targets": {"default": "t", "t": {"url": "http://127.0.0.1:9"}}}
    with pytest.raises(ConfigError) as error:
        build_settings(raw, {"MOOLTIPROXY_KEY": KEY}, base_dir=ROOT, source="test")
    assert "system.metrics_host: expected HOST:PORT" in str(error.value)


def _serve(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "MOOLTIPROXY_KEY": KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "mooltiproxy", "serve", "--config", str(config)],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _listening(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line


def test_with_a_shared_folder_a_scrape_sums_every_process(echo_upstream: str, tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    ports = [free_port(), free_port()]
    procs = []
    try:
        for port in ports:
            config = tmp_path / f"config-{port}.yaml"
            raw = {
                "system": {"port": port},
                "targets": {"default": "up", "up": {"url": echo_upstream, "mapping": {"/echo": None}}},
            }
            config.write_bytes(orjson.dumps(raw))  # JSON is YAML
            procs.append(_serve(config, {"PROMETHEUS_MULTIPROC_DIR": str(folder)}))
        for proc in procs:
            _listening(proc)
        headers = {"Authorization": f"Bearer {KEY}"}
        for i, port in enumerate(ports):
            for _ in range(i + 1):
                assert request("POST", f"http://127.0.0.1:{port}/echo", headers=headers, body={}).status == 200
        for port in ports:  # either process answers the sum
            samples = scrape(f"http://127.0.0.1:{port}")
            assert value(samples, "mooltiproxy_requests_total", target="up", route="/echo", status="200") == 3
            assert value(samples, "mooltiproxy_upstream_seconds_count", target="up") == 3
            assert value(samples, "mooltiproxy_in_flight_requests") == 1  # livesum: the scrape, in one of them
        assert any(name.startswith("counter_") for name in os.listdir(folder))
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=10)


def test_anthropic_messages_over_an_openai_server_count_the_tokens_of_streams_too(
    gateway: Callable[..., Gateway], openai_upstreams: Callable[..., OpenAIUpstream]
) -> None:
    up = openai_upstreams("a")
    origin = up.url.removesuffix("/").removesuffix("/v1")
    mapping = {
        "/v1/messages": {
            "path": "/v1/chat/completions",
            "in": "messagesReqAnthropicToOpenAI",
            "out": "messagesAnsOpenAItoAnthropic",
        }
    }
    gw = gateway({"targets": {"default": "vllm", "vllm": {"url": origin, "mapping": mapping}}})
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0) as sdk:
        plain = sdk.messages.create(model="test-model", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        with sdk.messages.stream(
            model="test-model", max_tokens=50, messages=[{"role": "user", "content": "hello"}]
        ) as stream:
            streamed = stream.get_final_message()
    samples = scrape(gw.url)
    assert value(samples, "mooltiproxy_requests_total", target="vllm", route="/v1/messages", status="200") == 2
    tokens_in = plain.usage.input_tokens + streamed.usage.input_tokens
    tokens_out = plain.usage.output_tokens + streamed.usage.output_tokens
    assert streamed.usage.output_tokens > 0
    assert value(samples, "mooltiproxy_tokens_in_total", target="vllm") == tokens_in
    assert value(samples, "mooltiproxy_tokens_out_total", target="vllm") == tokens_out
