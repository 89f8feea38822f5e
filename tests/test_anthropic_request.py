"""Anthropic Messages requests → OpenAI chat requests, and the refusals that name their field."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mooltiproxy.errors import BadRequest
from mooltiproxy.mappers._anthropic_common import STATE_KEY, AnthropicState, matched_stop, tool_id_in, tool_id_out
from mooltiproxy.mappers.anthropic_openai import messages_request
from mooltiproxy.mappers.anthropic_request import decode_request
from mooltiproxy.mappers.anthropic_tgi import count_tokens_request
from mooltiproxy.mappers.anthropic_tgi import messages_request as tgi_request
from mooltiproxy.plugin import MappingContext
from mooltiproxy.prompters import builtin_template, from_template


def ctx(**options: Any) -> MappingContext:
    return MappingContext(target="t", path="/v1/messages", upstream_path="/v1/chat/completions", options=options)


def tgi_ctx(**options: Any) -> MappingContext:
    template = builtin_template("chatml")
    assert template is not None
    return MappingContext(
        target="t", path="/v1/messages", upstream_path="/generate", options=options, template=template,
        prompter=from_template,
    )  # fmt: skip


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}], **extra}


def test_minimal_request() -> None:
    c = ctx()
    out = decode_request(body(), c)
    assert out == {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    state = c.state[STATE_KEY]
    assert isinstance(state, AnthropicState)
    assert state.id.startswith("msg_") and state.model == "claude-x" and state.stops == () and not state.stream


def test_every_field_is_translated() -> None:
    c = ctx()
    payload = body(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {}}],
        stop_sequences=["END", "", "END", "\n\n"],
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        metadata={"user_id": "u-1"},
        stream=True,
        tools=[{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    out = messages_request(payload, c)
    assert out["messages"][0] == {"role": "system", "content": "Be brief.\nBe kind."}
    assert out["stop"] == ["END", "\n\n"]
    assert (out["temperature"], out["top_p"], out["top_k"], out["user"]) == (0.5, 0.9, 40, "u-1")
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert c.stream
    function = {"name": "get_weather", "parameters": {"type": "object"}, "description": "Weather."}
    assert out["tools"] == [{"type": "function", "function": function}]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["parallel_tool_calls"] is False
    assert c.state[STATE_KEY].stops == ("END", "\n\n") and c.state[STATE_KEY].stream


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", "auto"), ("any", "required"), ("none", "none")]
)  # fmt: skip
def test_tool_choice(choice: str, expected: str) -> None:
    out = decode_request(body(tool_choice={"type": choice}), ctx())
    assert out["tool_choice"] == expected and "parallel_tool_calls" not in out


def test_top_k_zero_means_no_limit_and_empty_system_is_dropped() -> None:
    out = decode_request(body(top_k=0, system=""), ctx())
    assert "top_k" not in out and out["messages"][0]["role"] == "user"


def test_tool_use_and_tool_result_blocks() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "text", "text": "In Paris."}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "other", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "other", "content": [{"type": "text", "text": "noon"}]},
                {"type": "text", "text": "Thanks"},
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True}]},
    ]
    out = decode_request(body(messages=messages), ctx())["messages"]
    assert out[0] == {
        "role": "user",
        "content": [{"type": "text", "text": "Weather?"}, {"type": "text", "text": "In Paris."}],
    }
    assert out[1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "other", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    assert out[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert out[3] == {"role": "tool", "tool_call_id": "other", "content": "noon"}
    assert out[4] == {"role": "user", "content": "Thanks"}
    assert out[5]["content"] is None and out[5]["tool_calls"][0]["id"] == "2"
    assert out[6] == {"role": "tool", "tool_call_id": "2", "content": "Error"}
    assert len(out) == 7


def test_assistant_without_blocks_and_error_result_with_text() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": []},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "bad", "is_error": True}]},
    ]
    out = decode_request(body(messages=messages), ctx())["messages"]
    assert out[1] == {"role": "assistant", "content": ""}
    assert out[2]["content"] == "Error: bad"


def test_tool_ids_round_trip() -> None:
    assert tool_id_out("call_abc") == "toolu_call_abc"
    assert tool_id_in(tool_id_out("call_abc")) == "call_abc"
    assert tool_id_out("toolu_01") == "toolu_01"
    assert tool_id_out("chatcmpl-tool-ü/1").startswith("toolu_chatcmpl-tool-1")
    assert tool_id_out(None).startswith("toolu_") and len(tool_id_out(None)) > 20
    assert tool_id_in("toolu_") == "toolu_" and tool_id_in("plain") == "plain"


def test_matched_stop() -> None:
    assert matched_stop("one END two STOP", ["STOP", "END"]) == "END"
    assert matched_stop("abcd", ["bcd", "abc"]) == "abc"  # completes first
    assert matched_stop("abcd", ["bc", "abc"]) == "abc"  # same end: the longest
    assert matched_stop("abcd", ["x", ""]) is None


BAD: list[tuple[dict[str, Any], str]] = [
    ({"model": None}, "model"),
    ({"model": 3}, "model"),
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages.0"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages.0.content.0.text"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}]}]},
        "messages.0.content.1",
    ),
    ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "thinking"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages.0.content.0.tool_use_id"),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": 1}]}]},
        "messages.0.content.0.content",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "a", "content": [{"type": "image"}]}],
                }
            ]
        },
        "messages.0.content.0.content.0",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "is_error": "y"}]}]},
        "messages.0.content.0.is_error",
    ),
    (
        {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]},
        "messages.0.content.0.id",
    ),
    (
        {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "input": {}}]}]},
        "messages.0.content.0.name",
    ),
    (
        {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": "{}"}]}]},
        "messages.0.content.0.input",
    ),
    ({"system": 3}, "system"),
    ({"system": [{"type": "image"}]}, "system.0"),
    ({"system": [{"type": "text"}]}, "system.0.text"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"stop_sequences": ["a", 1]}, "stop_sequences.1"),
    ({"temperature": 1.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"metadata": "u"}, "metadata"),
    ({"metadata": {"user_id": 5}}, "metadata.user_id"),
    ({"stream": "yes"}, "stream"),
    ({"tools": {}}, "tools"),
    ({"tools": ["f"]}, "tools.0"),
    ({"tools": [{"input_schema": {}}]}, "tools.0.name"),
    ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
    ({"tools": [{"name": "f", "input_schema": {}, "description": 1}]}, "tools.0.description"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": 1}}, "tool_choice.disable_parallel_tool_use"),
]


@pytest.mark.parametrize(("change", "param"), BAD)
def test_refusals_name_their_field(change: dict[str, Any], param: str) -> None:
    payload = body()
    payload.update(change)
    payload = {k: v for k, v in payload.items() if v is not None}
    with pytest.raises(BadRequest) as info:
        decode_request(payload, ctx())
    assert info.value.param == param
    assert info.value.status == 400
    assert param.split(".")[0] in info.value.message


def test_not_an_object() -> None:
    with pytest.raises(BadRequest):
        decode_request([1], ctx())


def test_unknown_fields_ignored_unless_strict() -> None:
    assert "thinking" not in decode_request(body(thinking={"type": "enabled"}), ctx())
    with pytest.raises(BadRequest) as info:
        decode_request(body(thinking={"type": "enabled"}), ctx(strict=True))
    assert info.value.param == "thinking"
    decode_request(body(stream=True, top_k=3, tools=[], metadata={}), ctx(strict=True))


def test_over_tgi_the_template_renders_system_and_top_k_is_a_tgi_parameter() -> None:
    c = tgi_ctx()
    out = asyncio.run(tgi_request(body(system="Be brief.", top_k=7, temperature=0.5, stream=True), c))
    assert out["inputs"].startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert out["inputs"].endswith("<|im_start|>assistant\n")
    params = out["parameters"]
    assert params["top_k"] == 7 and params["max_new_tokens"] == 100 and params["temperature"] == 0.5
    assert c.stream and c.upstream_path == "/generate_stream"


def test_over_tgi_errors_name_the_anthropic_field() -> None:
    with pytest.raises(BadRequest) as info:
        asyncio.run(tgi_request(body(stop_sequences=["a", "b", "c", "d", "e"]), tgi_ctx()))
    assert info.value.param == "stop_sequences" and "'stop_sequences'" in info.value.message


def test_over_tgi_tools_reach_the_template_in_openai_shape() -> None:
    c = tgi_ctx()
    tools = [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}]
    asyncio.run(tgi_request(body(tools=tools), c))
    assert c.payload["tools"][0]["function"]["name"] == "get_weather"


def test_count_tokens_request() -> None:
    c = tgi_ctx()
    out = asyncio.run(
        count_tokens_request({"model": "m", "system": "S", "messages": [{"role": "user", "content": "Hi"}]}, c)
    )
    assert out == {"inputs": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"}
    with pytest.raises(BadRequest) as info:
        asyncio.run(count_tokens_request({"model": "m", "messages": []}, tgi_ctx()))
    assert info.value.param == "messages"
