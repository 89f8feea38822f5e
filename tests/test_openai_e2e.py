"""OpenAI clients through the real gateway to the TGI simulator: the SDK (sync and async), LangChain, raw HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from .conftest import KEY, Gateway
from .http import request

CHAT = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
TEXT = {"path": "/generate", "in": "textReqOpenAItoTGI", "out": "textAnsTGItoOpenAI"}


def tgi_config(url: str, **target: Any) -> dict[str, Any]:
    mapping = {"/chat/completions": CHAT, "/completions": TEXT, "/generate": None, "/generate_stream": None, "/": None}
    return {"targets": {"default": "tgi", "tgi": {"url": url, "mapping": mapping, **target}}}


@pytest.fixture
def gw(gateway: Any, tgi: str) -> Gateway:
    result: Gateway = gateway(tgi_config(tgi))
    return result


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)


def say(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"<<say:{text}>>"}]


def test_chat_completion_with_sdk_defaults(client: openai.OpenAI) -> None:
    # temperature 0 and top_p 1 are what many clients send; TGI rejects both as they are
    answer = client.chat.completions.create(
        model="my-model", messages=say("Paris is the capital of France."), temperature=0, top_p=1
    )
    assert answer.choices[0].message.content == "Paris is the capital of France."
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "my-model"
    assert answer.id.startswith("chatcmpl-") and len(answer.id) > 20
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8  # 7 text tokens + EOS, as TGI counts them
    assert answer.usage.prompt_tokens > 10
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    again = client.chat.completions.create(model="my-model", messages=say("x"))
    assert again.id != answer.id


def test_stop_sequences_are_removed_and_length_is_reported(client: openai.OpenAI) -> None:
    stopped = client.chat.completions.create(model="m", messages=say("one two END three"), stop="END")
    assert stopped.choices[0].message.content == "one two "
    assert stopped.choices[0].finish_reason == "stop"
    cut = client.chat.completions.create(model="m", messages=say("one two three four"), max_tokens=2)
    assert cut.choices[0].message.content == "one two"
    assert cut.choices[0].finish_reason == "length"


def test_n_choices_fan_out(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="m", messages=say("same"), n=3, temperature=0.7, seed=5)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.message.content == "same" for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens == 6


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=say("Hello there, streaming world!"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, streaming world!"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1


def test_stream_never_leaks_a_stop_sequence_spanning_tokens(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=say("alpha beta gamma delta epsilon"), stream=True, stop=[" gamma delta"]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "alpha beta"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_legacy_completions(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="m", prompt="Say <<say:forty two>>", max_tokens=10, echo=True)
    assert answer.choices[0].text == "Say <<say:forty two>>forty two"
    assert answer.id.startswith("cmpl-") and answer.object == "text_completion"
    many = client.completions.create(model="m", prompt=["<<say:a>>", "<<say:b>>"], max_tokens=5)
    assert [c.text for c in many.choices] == ["a", "b"]
    streamed = client.completions.create(model="m", prompt="<<say:one two three>>", stream=True, max_tokens=20)
    parts = list(streamed)
    assert "".join(p.choices[0].text for p in parts if p.choices) == "one two three"
    assert parts[-1].choices[0].finish_reason == "stop"


def test_legacy_logprobs(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="m", prompt="<<say:a b c>>", max_tokens=10, logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == ["a", " b", " c"]
    assert logprobs.token_logprobs is not None and len(logprobs.token_logprobs) == 3
    assert logprobs.top_logprobs is not None and all(len(t) == 2 for t in logprobs.top_logprobs)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="m", messages=say("x y"), logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and [t.token for t in content] == ["x", " y"]
    assert all(len(t.top_logprobs) == 2 for t in content)


def test_tgi_validation_error_is_an_openai_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=say("x " * 5000), max_tokens=10)
    assert "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096" in info.value.message
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_overload_is_a_429_the_sdk_understands(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "<<overloaded>>"}])
    with pytest.raises(openai.RateLimitError):  # before the first token of a stream: a real HTTP status
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "<<overloaded>>"}], stream=True)


def test_error_after_tokens_ends_the_stream_with_an_error_event(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "<<say:a b c d e>><<error_after:2>><<delay:30>>"}], stream=True
    )
    seen = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            seen += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert seen == "a b"
    assert "simulated failure" in info.value.message


def test_bad_requests_get_openai_errors(client: openai.OpenAI, gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=say("x"), seed=-1)
    assert info.value.param == "seed"
    reply = request("POST", gw.url + "/v1/chat/completions", headers=gw.headers(), body={"model": "m"})
    assert reply.status == 400 and reply.json()["error"]["param"] == "messages"


def test_strict_target_rejects_what_it_cannot_honour(gateway: Any, tgi: str) -> None:
    gw = gateway(tgi_config(tgi, strict=True, model="served-model"))
    client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=say("x"), logit_bias={"1": 5})
    assert info.value.param == "logit_bias"
    answer = client.chat.completions.create(model="", messages=say("ok"))
    assert answer.model == "served-model"


def test_async_client_streams_and_completes(gw: Gateway) -> None:
    async def main() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
        answer = await client.chat.completions.create(model="m", messages=say("async works"))
        stream = await client.chat.completions.create(model="m", messages=say("async streams"), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return answer.choices[0].message.content or "", text

    assert asyncio.run(main()) == ("async works", "async streams")


def test_target_header_with_sdk_v1(gateway: Any, tgi: str, echo_upstream: str) -> None:
    config = tgi_config(tgi)
    config["targets"]["default"] = "echo"
    config["targets"]["echo"] = {"url": echo_upstream, "mapping": {"/chat/completions": None}}
    gw = gateway(config)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, default_headers={"target": "tgi"})
    assert client.chat.completions.create(model="m", messages=say("picked")).choices[0].message.content == "picked"
    plain = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    answer = plain.chat.completions.create(model="m", messages=say("x"), extra_headers={"target": "tgi"})
    assert answer.choices[0].message.content == "x"


def test_models_are_listed_from_the_targets(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["simulated/tgi-model"]
    assert client.models.retrieve("simulated/tgi-model").owned_by == "tgi"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_langchain_invoke_and_stream(gw: Gateway) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="m", base_url=gw.url + "/v1", api_key=KEY, temperature=0, max_retries=0)  # type: ignore[arg-type]
    assert llm.invoke("<<say:LangChain works>>").content == "LangChain works"
    assert "".join(str(c.content) for c in llm.stream("<<say:and streams too>>")) == "and streams too"


def test_tgi_client_through_pass_through(gw: Gateway) -> None:
    from text_generation import Client

    tgi = Client(gw.url, headers={"Authorization": f"Bearer {KEY}"})
    assert tgi.generate("<<say:native>>", max_new_tokens=5).generated_text == "native"
    tokens = [r.token.text for r in tgi.generate_stream("<<say:also native>>", max_new_tokens=5) if not r.token.special]
    assert "".join(tokens) == "also native"


def test_response_formats_become_grammars_tgi_accepts(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    for response_format in (
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        {"type": "text"},
    ):
        answer = client.chat.completions.create(
            model="m",
            messages=say('{"city": "Paris"}'),
            response_format=response_format,  # type: ignore[arg-type]
        )
        assert answer.choices[0].message.content == '{"city": "Paris"}'
    with pytest.raises(openai.BadRequestError) as info:  # TGI needs top-level properties: refused clearly, by us
        client.chat.completions.create(
            model="m",
            messages=say("x"),
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "string"}}},
        )
    assert info.value.param == "response_format"


def test_legacy_best_of_picks_among_candidates(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="m", prompt="<<say:best>>", max_tokens=5, best_of=2, temperature=0.8)
    assert [c.text for c in answer.choices] == ["best"]
    assert answer.usage is not None and answer.usage.completion_tokens == 4  # both candidates are counted


def test_the_original_config_works_end_to_end(gateway: Any, tgi: str) -> None:
    """The original template's TGI targets (llama2_chat, HumanResponse, FalconInstruct), pointed at the simulator."""
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).parent / "data" / "original_config.yaml").read_text())
    for name in ("runpod1", "target1", "target2"):
        config["targets"][name]["url"] = tgi
    gw = gateway(config, env={"YOUR_OPENAI_API_KEY_ENVIRONMENT_VARIABLE_NAME": "unused"})
    client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
    for name in ("runpod1", "target1", "target2"):
        chat = client.chat.completions.create(
            model="m", messages=say("legacy works"), extra_headers={"target": name}, stream=name == "target1"
        )
        if isinstance(chat, openai.Stream):
            text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
        else:
            text = chat.choices[0].message.content or ""
        assert text == "legacy works", name
        legacy = client.completions.create(model="m", prompt="<<say:ok>>", extra_headers={"target": name})
        assert legacy.choices[0].text == "ok"
    info = request("GET", gw.url + "/info", headers=gw.headers(target="runpod1"))
    assert info.json()["model_id"] == "simulated/tgi-model"  # the original pass-through routes too
