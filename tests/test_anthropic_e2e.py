"""The official ``anthropic`` SDK through the real gateway: in front of the TGI simulator and an OpenAI upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from .anthropic_events import check_stream
from .conftest import KEY, BackgroundLoop, Gateway
from .http import request
from .openai_upstream import OpenAIUpstream

MESSAGES = {
    "path": "/generate",
    "in": "messagesReqAnthropicToTGI",
    "out": "messagesAnsTGItoAnthropic",
    "template": "chatml",
}
COUNT = {
    "path": "/tokenize",
    "in": "countTokensReqAnthropicToTGI",
    "out": "countTokensAnsTGItoAnthropic",
    "template": "chatml",
}
OPENAI = {"path": "/v1/chat/completions", "in": "messagesReqAnthropicToOpenAI", "out": "messagesAnsOpenAItoAnthropic"}


def config(tgi: str, openai_origin: str | None = None) -> dict[str, Any]:
    targets: dict[str, Any] = {
        "default": "tgi",
        "tgi": {"url": tgi, "mapping": {"/v1/messages": MESSAGES, "/v1/messages/count_tokens": COUNT}},
    }
    if openai_origin is not None:
        targets["vllm"] = {"url": openai_origin, "mapping": {"/v1/messages": OPENAI}}
    return {"targets": targets}


@pytest.fixture
def gw(gateway: Any, tgi: str) -> Gateway:
    result: Gateway = gateway(config(tgi))
    return result


@pytest.fixture
def client(gw: Gateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_create(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="claude-x", max_tokens=50, system="You are terse.", messages=user("<<say:Paris is in France.>>")
    )
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "claude-x"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Paris is in France."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == 6  # 5 text tokens + EOS, as TGI counts them
    assert message.usage.input_tokens > 10
    counted = client.messages.count_tokens(
        model="claude-x", system="You are terse.", messages=user("<<say:Paris is in France.>>")
    )
    assert counted.input_tokens == message.usage.input_tokens


def test_stop_sequences_and_max_tokens(client: anthropic.Anthropic) -> None:
    stopped = client.messages.create(
        model="m", max_tokens=50, messages=user("<<say:one two END three>>"), stop_sequences=["END", "NEVER"]
    )
    assert stopped.content[0].text == "one two "  # type: ignore[union-attr]
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "END"
    cut = client.messages.create(model="m", max_tokens=2, messages=user("<<say:one two three four>>"))
    assert cut.content[0].text == "one two"  # type: ignore[union-attr]
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2


def test_stream(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-x", max_tokens=50, messages=user("<<say:Hello there, streaming world!>>")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello there, streaming world!"
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 7 and final.usage.input_tokens > 5
    with client.messages.stream(
        model="m", max_tokens=50, messages=user("<<say:alpha beta gamma delta>>"), stop_sequences=[" gamma d"]
    ) as stream:
        stopped = stream.get_final_message()
    assert stopped.content[0].text == "alpha beta"  # type: ignore[union-attr]
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " gamma d"


def test_async_create_and_stream(gw: Gateway, bg: BackgroundLoop) -> None:
    async def go() -> tuple[str, str, str]:
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0)
        try:
            created = await client.messages.create(model="m", max_tokens=20, messages=user("<<say:async hi>>"))
            async with client.messages.stream(model="m", max_tokens=20, messages=user("<<say:a b c>>")) as s:
                pieces = [piece async for piece in s.text_stream]
                final = await s.get_final_message()
            return created.content[0].text, "".join(pieces), final.stop_reason or ""  # type: ignore[union-attr]
        finally:
            await client.close()

    assert asyncio.run(go()) == ("async hi", "a b c", "end_turn")


def test_raw_stream_follows_the_event_rules(gw: Gateway) -> None:
    body = {"model": "m", "max_tokens": 20, "stream": True, "messages": user("<<say:x y z>>")}
    reply = request("POST", gw.url + "/v1/messages", headers=gw.headers(), body=body)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    message = check_stream(reply.body)
    assert message["content"] == [{"type": "text", "text": "x y z"}]


def test_errors(client: anthropic.Anthropic, gw: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="m",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]}],
        )
    assert info.value.status_code == 400
    assert info.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": info.value.body["error"]["message"]},  # type: ignore[index]
    }
    assert "messages.0.content.0" in info.value.message
    reply = request("POST", gw.url + "/v1/messages", headers=gw.headers(), body={"model": "m", "messages": user("x")})
    assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in reply.json()["error"]["message"]
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="m", max_tokens=10, messages=user("<<overloaded>>"))
    with pytest.raises(anthropic.RateLimitError):  # an error before the first event keeps its status in streams
        with client.messages.stream(model="m", max_tokens=10, messages=user("<<overloaded>>")) as stream:
            stream.get_final_message()


def test_error_mid_stream_is_an_error_event(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model="m", max_tokens=20, messages=user("<<say:a b c d>><<error_after:2>>")) as s:
            s.get_final_message()
    assert "simulated failure" in str(info.value)


# -- over an OpenAI-compatible upstream


@pytest.fixture
def upstream(openai_upstreams: Callable[..., OpenAIUpstream]) -> OpenAIUpstream:
    return openai_upstreams("vllm", models=["test-model"])


@pytest.fixture
def vllm(gateway: Any, tgi: str, upstream: OpenAIUpstream) -> Iterator[anthropic.Anthropic]:
    gw: Gateway = gateway(config(tgi, upstream.origin))
    headers = {"target": "vllm"}
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0, default_headers=headers) as sdk:
        yield sdk


WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_openai_create_and_stream(vllm: anthropic.Anthropic, upstream: OpenAIUpstream) -> None:
    message = vllm.messages.create(
        model="test-model",
        max_tokens=30,
        system="Be brief.",
        messages=user("<<say:It is sunny.>>"),
        extra_body={"top_k": 5},
    )
    assert message.content[0].text == "It is sunny."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.model == "test-model"
    assert message.usage.output_tokens == 3 and message.usage.input_tokens > 0
    sent = upstream.received[-1]["json"]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 30 and sent["top_k"] == 5
    with vllm.messages.stream(model="test-model", max_tokens=30, messages=user("<<say:one two three>>")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three"
    assert final.usage.output_tokens == 3 and final.usage.input_tokens > 0  # from the usage chunk
    assert upstream.received[-1]["json"]["stream_options"] == {"include_usage": True}
    cut = vllm.messages.create(model="test-model", max_tokens=2, messages=user("<<say:one two three>>"))
    assert cut.stop_reason == "max_tokens"


def test_openai_tool_use_conversation(vllm: anthropic.Anthropic, upstream: OpenAIUpstream) -> None:
    question: Any = {"role": "user", "content": 'Weather in Paris? <<tool:get_weather:{"city": "Paris"}>>'}
    with vllm.messages.stream(model="test-model", max_tokens=100, messages=[question], tools=[WEATHER]) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    assert call.id.startswith("toolu_")
    assert upstream.received[-1]["json"]["tools"][0]["function"]["name"] == "get_weather"
    history: Any = [
        question,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 24 °C"},
                {"type": "text", "text": "<<say:It is sunny in Paris.>>"},
            ],
        },
    ]
    answer = vllm.messages.create(model="test-model", max_tokens=100, messages=history, tools=[WEATHER])
    assert answer.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]
    assert answer.stop_reason == "end_turn"
    sent = upstream.received[-1]["json"]["messages"]
    upstream_id = sent[1]["tool_calls"][0]["id"]
    assert upstream_id.startswith("call_") and "toolu_" + upstream_id == call.id  # the upstream's own id back
    assert sent[2] == {"role": "tool", "tool_call_id": upstream_id, "content": "sunny, 24 °C"}
    assert sent[3] == {"role": "user", "content": "<<say:It is sunny in Paris.>>"}
    created = vllm.messages.create(model="test-model", max_tokens=100, messages=[question], tools=[WEATHER])
    assert created.stop_reason == "tool_use" and created.content[-1].input == {"city": "Paris"}  # type: ignore[union-attr]


def test_openai_errors(vllm: anthropic.Anthropic, upstream: OpenAIUpstream) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        vllm.messages.create(model="nope", max_tokens=10, messages=user("hi"))
    assert "nope" in str(info.value)
    upstream.fail_next(3, 429)  # the first try and the target's 2 retries
    with pytest.raises(anthropic.RateLimitError):
        vllm.messages.create(model="test-model", max_tokens=10, messages=user("hi"))
    with pytest.raises(anthropic.APIStatusError) as mid:
        with vllm.messages.stream(
            model="test-model", max_tokens=20, messages=user("<<say:a b c d>><<error_after:2>>")
        ) as stream:
            stream.get_final_message()
    assert "simulated failure" in str(mid.value)


def test_tgi_tool_use(gateway: Any, tgi: str) -> None:
    entry = {**MESSAGES, "tool_format": "hermes"}
    gw: Gateway = gateway({"targets": {"default": "tgi", "tgi": {"url": tgi, "mapping": {"/v1/messages": entry}}}})
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0) as client:
        tgi_tool_calls(client)


def tgi_tool_calls(client: anthropic.Anthropic) -> None:
    # the simulator's directive ends at the first ">>": the answer leaves out the closing tag, as models may
    said = '<<say:Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n>>'
    created = client.messages.create(model="m", max_tokens=100, messages=user(said), tools=[WEATHER])
    with client.messages.stream(model="m", max_tokens=100, messages=user(said), tools=[WEATHER]) as stream:
        streamed = stream.get_final_message()
    for message in (created, streamed):
        assert message.stop_reason == "tool_use"
        call = message.content[-1]
        assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
        assert call.id.startswith("toolu_call_")
    assert created.content[0].type == "text" and created.content[0].text == "Checking."


def test_tgi_multi_turn_tool_use_conversation(gateway: Any, tgi: str) -> None:
    # Qwen 2.5's template renders tool calls and results (the plain ChatML one has no place for them)
    entry = {**MESSAGES, "template": "qwen2.5"}
    mapping = {"/v1/messages": entry, "/v1/messages/count_tokens": {**COUNT, "template": "qwen2.5"}}
    gw: Gateway = gateway({"targets": {"default": "tgi", "tgi": {"url": tgi, "mapping": mapping}}})
    # the directive ends at the first ">>", so the closing tag is left out (the parser accepts that, as models do)
    said = '<<say:<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n>>'
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0) as client:
        first = client.messages.create(model="m", max_tokens=100, messages=user(said), tools=[WEATHER])
        call = first.content[-1]
        assert first.stop_reason == "tool_use" and call.type == "tool_use"
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees and sunny"}
        conversation: Any = [
            {"role": "user", "content": said},
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {"role": "user", "content": [result, {"type": "text", "text": "<<say:It is 18 degrees in Paris.>>"}]},
        ]
        with client.messages.stream(model="m", max_tokens=100, messages=conversation, tools=[WEATHER]) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "end_turn"
        assert final.content[0].type == "text" and final.content[0].text == "It is 18 degrees in Paris."
        counted = client.messages.count_tokens(model="m", messages=conversation, tools=[WEATHER])
        result["content"] = "18 degrees and sunny, with a light breeze from the west all afternoon"
        longer = client.messages.count_tokens(model="m", messages=conversation, tools=[WEATHER])
    assert longer.input_tokens > counted.input_tokens > 0  # the tool result is in the prompt the model reads
