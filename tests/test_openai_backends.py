"""OpenAI-compatible backends: pass-through, model routing, replicas, retries, failover, health.

Real OpenAI-style servers on loopback (tests/openai_upstream.py) and the TGI simulator behind the real gateway,
driven by the official ``openai`` SDK (its own retries off, so every retry seen is the gateway's).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from .conftest import BackgroundLoop, Gateway
from .http import request
from .openai_upstream import OpenAIUpstream

Upstreams = Callable[..., OpenAIUpstream]
CHAT = "POST /v1/chat/completions"


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(gw: Gateway, **kwargs: Any) -> openai.OpenAI:
    made = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0, timeout=20, **kwargs)
    _clients.append(made)
    return made


def ask(gw: Gateway, model: str = "test-model", text: str = "hi", **kwargs: Any) -> str:
    answer = client(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)
    return answer.choices[0].message.content or ""


def openai_target(*replicas: OpenAIUpstream, **extra: Any) -> dict[str, Any]:
    if len(replicas) == 1:
        return {"api": "openai", "url": replicas[0].url, **extra}
    return {"api": "openai", "replicas": [r.url for r in replicas], **extra}


def config(default: str = "llm", **targets: dict[str, Any]) -> dict[str, Any]:
    return {"targets": {"default": default, **targets}}


# --------------------------------------------------------------------------------------------- pass-through


def test_chat_completions_and_embeddings_pass_through_intact(
    gateway: Callable[..., Gateway], openai_upstreams: Upstreams
) -> None:
    up = openai_upstreams("a", api_key="upstream-secret")
    gw = gateway(config(llm=openai_target(up, key="upstream-secret")))
    c = client(gw)
    answer = c.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "<<say:Hello there>>"}],
        logit_bias={"42": 1},
        extra_body={"top_k": 5, "repetition_penalty": 1.1},
    )
    assert answer.choices[0].message.content == "Hello there"
    sent = up.received[-1]
    assert sent["json"]["logit_bias"] == {"42": 1} and sent["json"]["top_k"] == 5  # fields the gateway never knew
    assert sent["headers"]["Authorization"] == "Bearer upstream-secret"  # the target's key, not the client's
    chunks = list(
        c.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "<<say:one two three>>"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "one two three"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    legacy = c.completions.create(model="test-model", prompt="<<say:legacy>>")
    assert legacy.choices[0].text == "legacy"
    vectors = c.embeddings.create(model="test-model", input=["a", "b"])
    assert len(vectors.data) == 2
    assert up.calls["POST /v1/embeddings"] == 1


def test_upstream_errors_stay_openai_shaped(gateway: Callable[..., Gateway], openai_upstreams: Upstreams) -> None:
    up = openai_upstreams("a")
    gw = gateway(config(llm=openai_target(up)))
    with pytest.raises(openai.NotFoundError) as caught:
        ask(gw, model="no-such-model")
    assert "no-such-model" in str(caught.value)
    up.fail_next(1, 400)
    with pytest.raises(openai.BadRequestError):
        ask(gw)
    assert up.calls[CHAT] == 2  # a 400 is the client's problem: never retried


def test_streams_are_relayed_as_they_arrive(gateway: Callable[..., Gateway], openai_upstreams: Upstreams) -> None:
    up = openai_upstreams("a")
    gw = gateway(config(llm=openai_target(up)))
    stream = client(gw).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "<<tokens:4>><<delay:300>>"}], stream=True
    )
    started = time.monotonic()
    arrivals = [time.monotonic() - started for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] > 0.6  # spread out as the upstream sent them, not buffered to the end


# -------------------------------------------------------------------------------------------- model routing


@pytest.fixture
def routed(
    gateway: Callable[..., Gateway], openai_upstreams: Upstreams, tgi: str
) -> Iterator[tuple[Gateway, OpenAIUpstream, OpenAIUpstream]]:
    llama = openai_upstreams("vllm", models=["meta-llama/Llama-3.1-8B-Instruct"])
    qwen = openai_upstreams("llamacpp", models=["qwen2.5-7b"])
    tgi_chat = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
    gw = gateway(
        config(
            default="vllm",
            vllm=openai_target(
                llama, models=[{"llama": "meta-llama/Llama-3.1-8B-Instruct"}, "meta-llama/Llama-3.1-8B-Instruct"]
            ),
            llamacpp=openai_target(qwen, models=["qwen2.5-7b"]),
            tgi={"url": tgi, "models": ["tgi-model"], "mapping": {"/chat/completions": tgi_chat}},
        )
    )
    yield gw, llama, qwen


def test_the_model_picks_the_target(routed: tuple[Gateway, OpenAIUpstream, OpenAIUpstream]) -> None:
    gw, llama, qwen = routed
    assert ask(gw, "qwen2.5-7b", "<<say:from qwen>>") == "from qwen"
    assert ask(gw, "tgi-model", "<<say:from tgi>>") == "from tgi"
    assert ask(gw, "llama", "<<say:from llama>>") == "from llama"
    assert llama.received[-1]["json"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"  # the alias was renamed
    assert (llama.calls[CHAT], qwen.calls[CHAT]) == (1, 1)
    # a target header still wins over the model
    assert ask(gw, "qwen2.5-7b", "<<say:by header>>", extra_headers={"target": "llamacpp"}) == "by header"


def test_an_unknown_model_is_a_404_naming_it(routed: tuple[Gateway, OpenAIUpstream, OpenAIUpstream]) -> None:
    gw, llama, qwen = routed
    with pytest.raises(openai.NotFoundError) as caught:
        ask(gw, "gpt-5")
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and "gpt-5" in body["message"]
    assert llama.calls[CHAT] == qwen.calls[CHAT] == 0


def test_models_lists_every_routable_model(routed: tuple[Gateway, OpenAIUpstream, OpenAIUpstream]) -> None:
    gw, _, _ = routed
    listed = {m.id: m.owned_by for m in client(gw).models.list()}
    assert listed == {
        "llama": "vllm",
        "meta-llama/Llama-3.1-8B-Instruct": "vllm",
        "qwen2.5-7b": "llamacpp",
        "tgi-model": "tgi",
    }
    assert client(gw).models.retrieve("qwen2.5-7b").owned_by == "llamacpp"


def test_any_other_model_goes_to_a_default_target_that_lists_none(
    gateway: Callable[..., Gateway], openai_upstreams: Upstreams
) -> None:
    anything = openai_upstreams("any", models=["whatever"])
    special = openai_upstreams("special", models=["special"])
    gw = gateway(config(default="any", any=openai_target(anything), special=openai_target(special, models=["special"])))
    assert ask(gw, "whatever", "<<say:ok>>") == "ok"
    assert ask(gw, "special", "<<say:special>>") == "special"
    assert anything.calls[CHAT] == special.calls[CHAT] == 1


# ------------------------------------------------------------------------------------------------ replicas


def test_round_robin_and_weights_spread_requests(gateway: Callable[..., Gateway], openai_upstreams: Upstreams) -> None:
    a, b = openai_upstreams("a"), openai_upstreams("b")
    gw = gateway(config(llm=openai_target(a, b)))
    for _ in range(10):
        ask(gw)
    assert (a.calls[CHAT], b.calls[CHAT]) == (5, 5)
    c, d = openai_upstreams("c"), openai_upstreams("d")
    weighted = {"api": "openai", "replicas": [{"url": c.url, "weight": 3}, d.url]}
    gw = gateway(config(llm=weighted))
    for _ in range(8):
        ask(gw)
    assert (c.calls[CHAT], d.calls[CHAT]) == (6, 2)


def test_least_inflight_avoids_a_busy_replica(gateway: Callable[..., Gateway], openai_upstreams: Upstreams) -> None:
    a, b = openai_upstreams("a"), openai_upstreams("b")
    gw = gateway(config(llm=openai_target(a, b, balance="least_inflight")))
    slow = client(gw).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "<<tokens:3>><<delay:400>>"}], stream=True
    )
    first = next(iter(slow))  # one stream held open on one replica
    busy = a if a.calls[CHAT] else b
    idle = b if busy is a else a
    for _ in range(4):
        ask(gw)
    assert idle.calls[CHAT] == 4 and busy.calls[CHAT] == 1
    assert first.choices[0].delta.role == "assistant"
    slow.close()


def test_a_replica_killed_mid_test_costs_no_client_error(
    bg: BackgroundLoop, gateway: Callable[..., Gateway], openai_upstreams: Upstreams
) -> None:
    a, b = openai_upstreams("a"), openai_upstreams("b")
    gw = gateway(config(llm=openai_target(a, b, cooldown={"failures": 1, "seconds": 30})))
    errors: list[BaseException] = []
    results: list[str] = []

    def one(i: int) -> None:
        try:
            results.append(ask(gw, text=f"<<delay:100>>request {i}"))
        except BaseException as exc:
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(8)]
        time.sleep(0.05)  # requests are in flight on both replicas
        bg.run(a.stop())
        futures += [pool.submit(one, i) for i in range(8, 24)]
        for future in futures:
            future.result()
    assert errors == []
    assert len(results) == 24
    assert sum(r.startswith("b says") for r in results) >= 16


def test_a_dead_replica_costs_at_most_one_connect_attempt(
    gateway: Callable[..., Gateway], openai_upstreams: Upstreams
) -> None:
    good = openai_upstreams("good")
    with blackhole() as dead_url:
        target = {"api": "openai", "replicas": [dead_url, good.url], "connect_timeout": 1.0}
        gw = gateway(config(llm=target))
        durations = []
        for _ in range(6):
            started = time.monotonic()
            assert ask(gw, text="<<say:fine>>") == "fine"
            durations.append(time.monotonic() - started)
    slow = [d for d in durations if d > 0.9]
    assert len(slow) == 1 and slow[0] < 3, durations  # one connect timeout, then the replica is out


def test_a_503_burst_is_absorbed_and_the_failing_replica_cools_down_then_recovers(
    gateway: Callable[..., Gateway], openai_upstreams: Upstreams
) -> None:
    a, b = openai_upstreams("a"), openai_upstreams("b")
    gw = gateway(config(llm=openai_target(a, b, cooldown={"failures": 2, "seconds": 2})))
    a.fail_next(2, 503)
    started = time.monotonic()
    for _ in range(10):
        assert ask(gw, text="<<say:ok>>") == "ok"
    assert a.calls[CHAT] == 2  # two failures took it out; b served everything
    assert b.calls[CHAT] == 10
    assert time.monotonic() - started < 2, "too slow to observe the cooldown"
    time.sleep(2.3 - (time.monotonic() - started))
    for _ in range(4):
        ask(gw)
    assert a.calls[CHAT] == 4  # back in turn after the cooldown


def test_retry_after_is_honoured_or_handed_back(gateway: Callable[..., Gateway], openai_upstreams: Upstreams) -> None:
    a = openai_upstreams("a")
    gw = gateway(config(llm=openai_target(a, max_retry_wait=2)))
    a.fail_next(1, 429, retry_after=0.5)
    started = time.monotonic()
    assert ask(gw, text="<<say:waited>>") == "waited"
    assert time.monotonic() - started >= 0.5
    a.fail_next(3, 503, retry_after=30)  # longer than the gateway waits: the client gets it, to retry later
    with pytest.raises(openai.InternalServerError) as caught:
        ask(gw)
    assert caught.value.response.status_code == 503
    assert caught.value.response.headers["Retry-After"] == "30"
    assert a.calls[CHAT] == 3


def test_fallbacks_take_over_when_every_replica_failed(
    bg: BackgroundLoop, gateway: Callable[..., Gateway], openai_upstreams: Upstreams, tgi: str
) -> None:
    primary, backup = openai_upstreams("primary"), openai_upstreams("backup")
    tgi_chat = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
    gw = gateway(
        config(
            primary=openai_target(primary, models=["test-model"], fallbacks=["backup", "tgi"]),
            backup=openai_target(backup),
            tgi={"url": tgi, "mapping": {"/chat/completions": tgi_chat}},
            default="primary",
        )
    )
    primary.fail_next(3, 503)
    assert ask(gw, text="x").startswith("backup says")
    assert primary.calls[CHAT] == 3  # 1 try + 2 retries
    bg.run(primary.stop())
    bg.run(backup.stop())
    assert ask(gw, text="<<say:from tgi>>") == "from tgi"  # a fallback of another kind, translated


def test_a_started_stream_is_never_retried(gateway: Callable[..., Gateway], openai_upstreams: Upstreams) -> None:
    a, b = openai_upstreams("a"), openai_upstreams("b")
    gw = gateway(config(llm=openai_target(a, b)))
    with pytest.raises(openai.APIError):
        stream = client(gw).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "<<tokens:6>><<cut_after:2>>"}], stream=True
        )
        list(stream)
    assert a.calls[CHAT] + b.calls[CHAT] == 1


def test_health_checks_take_a_replica_out_and_back(
    gateway: Callable[..., Gateway], openai_upstreams: Upstreams
) -> None:
    a, b = openai_upstreams("a"), openai_upstreams("b")
    gw = gateway(config(llm=openai_target(a, b, health={"path": "/health", "interval": 0.1})))

    def checked_twice() -> None:  # a check has surely run since the last change
        seen = a.calls["GET /health"]
        deadline = time.monotonic() + 10
        while a.calls["GET /health"] < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.02)

    a.healthy = False
    checked_twice()
    for _ in range(4):
        ask(gw)
    assert a.calls[CHAT] == 0 and b.calls[CHAT] == 4
    a.healthy = True
    checked_twice()
    for _ in range(4):
        ask(gw)
    assert a.calls[CHAT] == 2


def test_a_tgi_target_can_be_a_replica_set(gateway: Callable[..., Gateway], tgi: str) -> None:
    tgi_chat = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
    with blackhole() as dead_url:
        replicas = [dead_url.removesuffix("/v1"), tgi]
        gw = gateway(
            config(llm={"replicas": replicas, "connect_timeout": 0.3, "mapping": {"/chat/completions": tgi_chat}})
        )
        for _ in range(3):
            assert ask(gw, text="<<say:tgi answers>>") == "tgi answers"


# --------------------------------------------------------------------------------------------- config, check


def test_config_mistakes_are_all_reported(gateway: Callable[..., Gateway]) -> None:
    from mooltiproxy.config import build_settings
    from mooltiproxy.errors import ConfigError

    raw = config(
        a={
            "api": "openai",
            "url": "http://x/v1",
            "replicas": ["http://y/v1"],
            "fallbacks": ["a", "nope"],
            "models": ["m"],
        },
        b={"api": "openai", "replicas": ["ftp://z"], "models": ["m"], "health": {"path": "health"}},
        c={"url": "http://c"},
        default="a",
    )
    with pytest.raises(ConfigError) as caught:
        build_settings(raw, {"MOOLTIPROXY_KEY": "k" * 16}, base_dir=__import__("pathlib").Path("."), source="t")
    problems = caught.value.problems
    assert "targets.a: give either 'url' or 'replicas', not both" in problems
    assert "targets.a.fallbacks.0: a target cannot be its own fallback" in problems
    assert any(p.startswith("targets.a.fallbacks.1: 'nope' is not a target") for p in problems)
    assert "targets.b.replicas.0: 'ftp://z' must start with http:// or https://" in problems
    assert "targets.b.models: model 'm' is already routed to target 'a'" in problems
    assert "targets.b.health.path: 'health' must start with '/'" in problems
    assert any(p.startswith("targets.c.mapping: required") for p in problems)


def test_check_shows_model_target_replicas(tmp_path: Any) -> None:
    import subprocess
    import sys

    path = tmp_path / "config.yaml"
    path.write_text(
        "targets:\n  default: vllm\n  vllm:\n    api: openai\n"
        "    replicas: [http://10.0.0.1:8000/v1, {url: http://10.0.0.2:8000/v1, weight: 2}]\n"
        "    models: [{llama: meta-llama/Llama-3.1-8B-Instruct}]\n    fallbacks: [ollama]\n"
        "  ollama:\n    api: openai\n    url: http://127.0.0.1:11434/v1\n    models: [qwen2.5]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "mooltiproxy", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"MOOLTIPROXY_KEY": "k" * 16, "PATH": ""},
        check=True,
    ).stdout
    replicas = "http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1 (weight 2)"
    assert f"llama (sent as 'meta-llama/Llama-3.1-8B-Instruct') -> vllm -> {replicas}" in out
    assert "qwen2.5 -> ollama -> http://127.0.0.1:11434/v1" in out
    assert "fallbacks: ollama" in out


# ---------------------------------------------------------------------------------------------- raw HTTP


def test_unknown_model_over_raw_http_names_it(routed: tuple[Gateway, OpenAIUpstream, OpenAIUpstream]) -> None:
    gw, _, _ = routed
    reply = request("POST", gw.url + "/v1/chat/completions", headers=gw.headers(), body={"model": "x", "messages": []})
    assert reply.status == 404
    assert reply.json()["error"] == {
        "message": "The model 'x' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


class blackhole:
    """A loopback port whose connects hang: a listener that never accepts, its backlog already full."""

    def __enter__(self) -> str:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(4):  # fill the accept queue; later SYNs are dropped, so connects time out
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            self.fillers.append(s)
        time.sleep(0.05)
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
            hangs = False
        except OSError:
            hangs = True
        finally:
            probe.close()
        if not hangs:
            self.__exit__()
            pytest.skip("this kernel accepts connects past a full backlog")
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc: object) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()


def test_an_openai_target_serves_the_anthropic_messages_api_too(
    gateway: Callable[..., Gateway], openai_upstreams: Upstreams
) -> None:
    import anthropic

    vllm = openai_upstreams("vllm", models=["meta-llama/Llama-3.1-8B-Instruct"])
    gw = gateway(config(llm=openai_target(vllm, models=[{"llama": "meta-llama/Llama-3.1-8B-Instruct"}])))
    with anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as sdk:
        message = sdk.messages.create(
            model="llama", max_tokens=50, messages=[{"role": "user", "content": "<<say:routed by model>>"}]
        )
        assert message.content[0].type == "text" and message.content[0].text == "routed by model"
        with sdk.messages.stream(
            model="llama", max_tokens=50, messages=[{"role": "user", "content": "<<say:and streamed>>"}]
        ) as stream:
            assert "".join(stream.text_stream) == "and streamed"
            assert stream.get_final_message().usage.output_tokens > 0
        with pytest.raises(anthropic.NotFoundError) as caught:
            sdk.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert caught.value.body == {
            "type": "error",
            "error": {"type": "not_found_error", "message": "The model 'nope' does not exist"},
        }
        with pytest.raises(anthropic.APIStatusError) as counted:
            sdk.messages.count_tokens(model="llama", messages=[{"role": "user", "content": "x"}])
        assert counted.value.status_code == 501
    assert vllm.received[0]["path"] == "/v1/chat/completions"
    assert vllm.received[0]["json"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
