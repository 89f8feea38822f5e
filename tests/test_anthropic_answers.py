"""OpenAI chat answers and streams → Anthropic messages and events, directly and composed over TGI."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from mooltiproxy.errors import GatewayError, UpstreamError, UpstreamStatus
from mooltiproxy.mappers._anthropic_common import AnthropicState
from mooltiproxy.mappers.anthropic_answer import encode_answer, openai_error
from mooltiproxy.mappers.anthropic_openai import messages_answer
from mooltiproxy.mappers.anthropic_stream import AnthropicStream
from mooltiproxy.mappers.anthropic_tgi import count_tokens_answer
from mooltiproxy.mappers.anthropic_tgi import messages_answer as tgi_answer
from mooltiproxy.mappers.anthropic_tgi import messages_request as tgi_request
from mooltiproxy.plugin import MappingContext, StreamTranslator
from mooltiproxy.prompters import builtin_template, from_template

from .anthropic_events import check_events, check_stream, parse_events

STATE = AnthropicState(id="msg_test", model="claude-x", stops=("END", "STOP"))


def ctx() -> MappingContext:
    return MappingContext(target="t", path="/v1/messages", upstream_path="/v1/chat/completions")


def answer(message: dict[str, Any], finish: str | None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "upstream-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def test_text_answer() -> None:
    out = encode_answer(answer({"role": "assistant", "content": "Hello!"}, "stop"), STATE)
    assert out == {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }


@pytest.mark.parametrize(
    ("finish", "extra", "matched", "reason", "sequence"),
    [
        ("stop", {}, None, "end_turn", None),
        ("length", {}, None, "max_tokens", None),
        ("stop", {"stop_reason": "STOP"}, None, "stop_sequence", "STOP"),  # vLLM names the stop
        ("stop", {"stop_reason": "<|im_end|>"}, None, "end_turn", None),  # not one of the client's
        ("stop", {"stop_reason": 151645}, None, "end_turn", None),  # vLLM: a stop token id
        ("stop", {}, "END", "stop_sequence", "END"),  # the back-end saw it
        ("stop", {}, "<|im_end|>", "end_turn", None),
        ("content_filter", {}, None, "refusal", None),
        (None, {}, None, "end_turn", None),
    ],
)
def test_stop_reasons(
    finish: str | None, extra: dict[str, Any], matched: str | None, reason: str, sequence: Any
) -> None:
    out = encode_answer(answer({"role": "assistant", "content": "x"}, finish, **extra), STATE, matched)
    assert (out["stop_reason"], out["stop_sequence"]) == (reason, sequence)


def test_tool_use_answer() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
    ]
    for finish in ("tool_calls", "stop"):
        out = encode_answer(answer({"role": "assistant", "content": None, "tool_calls": calls}, finish), STATE)
        assert out["content"] == [
            {"type": "tool_use", "id": "toolu_call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_call_2", "name": "now", "input": {}},
        ]
        assert out["stop_reason"] == "tool_use"


def test_broken_answers() -> None:
    bad_args = [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]
    broken: Any
    for broken in (
        [],
        {"choices": []},
        {"choices": [{"index": 0}]},
        answer({"role": "assistant", "content": "", "tool_calls": bad_args}, "tool_calls"),
    ):
        with pytest.raises(UpstreamError):
            encode_answer(broken, STATE)


def test_answer_mapper_uses_the_request_state() -> None:
    c = ctx()
    c.payload = {"model": "asked", "stop_sequences": ["Z"]}
    out = messages_answer(answer({"role": "assistant", "content": "a"}, "stop", stop_reason="Z"), c)
    assert out["model"] == "asked" and out["stop_reason"] == "stop_sequence" and out["id"].startswith("msg_")
    assert messages_answer.error_format == "anthropic" and tgi_answer.error_format == "anthropic"


def test_upstream_errors_keep_status_and_message() -> None:
    vllm = orjson.dumps({"error": {"message": "too long", "type": "BadRequestError", "code": 400}})
    error = openai_error(400, vllm, None)
    assert isinstance(error, UpstreamStatus) and error.status == 400 and error.message == "too long"
    assert error.anthropic_body() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "too long"},
    }
    limited = openai_error(429, b'{"message": "slow down"}', {"Retry-After": "2"})
    assert limited is not None and limited.status == 429 and limited.headers == {"Retry-After": "2"}
    assert limited.message == "slow down"
    detail = openai_error(404, b'{"detail": "Not Found"}', None)
    assert detail is not None and detail.message == "Not Found"
    plain = openai_error(503, b"", None)
    assert plain is not None and plain.status == 503 and "503" in plain.message
    assert openai_error(302, b"", None) is None


# -- streams


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body["choices"] = (
        [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}]
    )
    body["usage"] = extra.pop("usage", None) if delta is None else None
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage_chunk(prompt: int, completion: int) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    body["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def call(index: int, *, id: str | None = None, name: str | None = None, arguments: str = "") -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    piece: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        piece.update(id=id, type="function")
    return {"tool_calls": [piece]}


# text with multi-byte characters, then two tool calls streamed in pieces, then usage and [DONE]
OPENAI_STREAM = b"".join(
    [
        b": keep-alive\n\n",
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me "}),
        chunk({"content": "check é ☀"}),
        chunk(call(0, id="call_a", name="get_weather")),
        chunk(call(0, arguments='{"city": ')),
        chunk(call(0, arguments='"Paris"}')),
        chunk(call(1, id="call_b", name="now", arguments="{}")),
        chunk({}, "tool_calls"),
        usage_chunk(21, 9),
        b"data: [DONE]\n\n",
    ]
)


def run(t: StreamTranslator, pieces: list[bytes]) -> bytes:
    out = b"".join(t.feed(0, piece) for piece in pieces)
    return out + t.end(0) + t.finish()


def stream(state: AnthropicState = STATE) -> AnthropicStream:
    return AnthropicStream(state, ctx())


def test_stream_events() -> None:
    events = parse_events(run(stream(), [OPENAI_STREAM]))
    message = check_events(events)
    assert message["content"] == [
        {"type": "text", "text": "Let me check é ☀"},
        {"type": "tool_use", "id": "toolu_call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_call_b", "name": "now", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 21, "output_tokens": 9}
    assert message["id"] == "msg_test" and message["model"] == "claude-x"
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip


def test_stream_cut_at_every_byte_gives_the_same_events() -> None:
    whole = run(stream(), [OPENAI_STREAM])
    check_stream(whole)
    for cut in range(1, len(OPENAI_STREAM)):
        assert run(stream(), [OPENAI_STREAM[:cut], OPENAI_STREAM[cut:]]) == whole, cut
    assert run(stream(), [OPENAI_STREAM[i : i + 1] for i in range(len(OPENAI_STREAM))]) == whole


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {"stop_reason": "other"}, "end_turn", None),
    ],
)
def test_stream_stop_reasons(finish: str, extra: dict[str, Any], reason: str, sequence: str | None) -> None:
    data = chunk({"role": "assistant", "content": "Hi"}) + chunk({}, finish, **extra) + b"data: [DONE]\n\n"
    message = check_stream(run(stream(), [data]))
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)
    assert message["content"] == [{"type": "text", "text": "Hi"}]
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}  # the upstream sent no usage


def test_stream_whose_last_event_has_no_blank_line() -> None:
    data = chunk({"content": "Hi"}) + chunk({}, "length")[:-2]
    assert check_stream(run(stream(), [data]))["stop_reason"] == "max_tokens"


def test_stream_without_content_and_text_after_a_tool() -> None:
    empty = check_stream(run(stream(), [chunk({"role": "assistant"}) + chunk({}, "stop")]))
    assert empty["content"] == [] and empty["stop_reason"] == "end_turn"
    data = chunk(call(0, id="c", name="f", arguments="{}")) + chunk({"content": "done"}) + chunk({}, "stop")
    mixed = check_stream(run(stream(), [data]))
    assert [b["type"] for b in mixed["content"]] == ["tool_use", "text"] and mixed["stop_reason"] == "tool_use"


def test_stream_errors() -> None:
    error = b'data: {"error": {"message": "simulated failure", "type": "InternalServerError", "code": 500}}\n\n'
    t = stream()
    with pytest.raises(GatewayError) as info:  # before any event: raised, so the client gets the HTTP status
        t.feed(0, error)
    assert info.value.status == 500 and info.value.message == "simulated failure"
    t = stream()
    out = t.feed(0, chunk({"content": "a"}))
    with pytest.raises(GatewayError) as info:
        t.feed(0, error)
    out += t.fail(info.value)
    message = check_stream(out)
    assert message["error"] == {"type": "api_error", "message": "simulated failure"}
    for broken in (b"data: {nope\n\n", b"data: [1]\n\n"):
        with pytest.raises(UpstreamError):
            stream().feed(0, broken)
    unfinished = stream()
    unfinished.feed(0, chunk({"content": "a"}) + b"data: [DONE]\n\n")
    with pytest.raises(UpstreamError):
        unfinished.end(0)
    interleaved = stream()
    interleaved.feed(0, chunk(call(0, id="a", name="f")) + chunk(call(1, id="b", name="g")))
    with pytest.raises(UpstreamError):
        interleaved.feed(0, chunk(call(0, arguments="{}")))


def test_message_start_carries_the_prompt_tokens_tgi_announced() -> None:
    c = ctx()
    c.reply_headers = [{"x-prompt-tokens": "33"}]
    events = parse_events(run(AnthropicStream(STATE, c), [chunk({"content": "a"}) + chunk({}, "stop")]))
    assert events[0][1]["message"]["usage"]["input_tokens"] == 33
    check_events(events)


# -- over TGI: the TGI → OpenAI translator, then ours


def tgi_ctx(body: dict[str, Any]) -> MappingContext:
    template = builtin_template("chatml")
    assert template is not None
    c = MappingContext(target="t", path="/v1/messages", upstream_path="/generate", template=template)
    c.prompter = from_template
    payload = {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}], **body}
    c.payload = payload
    asyncio.run(tgi_request(payload, c))
    c.reply_headers = [{"x-prompt-tokens": "9"}]
    return c


def tok(text: str, i: int, special: bool = False) -> dict[str, Any]:
    return {"index": i, "token": {"id": i, "text": text, "logprob": -0.5, "special": special}, "generated_text": None}


def tgi_stream(texts: list[str], reason: str, *, special_end: bool = False) -> bytes:
    events = [tok(t, i + 1) for i, t in enumerate(texts)]
    if special_end:
        events.append(tok("<|im_end|>", len(texts) + 1, special=True))
    details = {"finish_reason": reason, "generated_tokens": len(events), "seed": None, "input_length": 9}
    events[-1] = {**events[-1], "generated_text": "".join(texts), "details": details}
    return b"".join(b"data:" + orjson.dumps(e) + b"\n\n" for e in events)


def test_tgi_stream_to_anthropic_events_cut_anywhere() -> None:
    c = tgi_ctx({"stream": True})
    data = tgi_stream([" Hello", " wor", "ld", " é"], "eos_token", special_end=True)
    whole = run(tgi_answer.stream(c), [data])
    message = check_stream(whole)
    assert message["content"] == [{"type": "text", "text": " Hello world é"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"] == {"input_tokens": 9, "output_tokens": 5}
    for cut in range(1, len(data)):
        assert run(tgi_answer.stream(c), [data[:cut], data[cut:]]) == whole, cut


def test_tgi_stream_stop_sequences() -> None:
    c = tgi_ctx({"stream": True, "stop_sequences": ["END"]})
    data = tgi_stream(["one", " two", " E", "ND", " three"], "stop_sequence")
    message = check_stream(run(tgi_answer.stream(c), [data]))
    assert message["content"] == [{"type": "text", "text": "one two "}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    # the template's own end of turn, written as text, is an end_turn even with client stops
    c = tgi_ctx({"stream": True, "stop_sequences": ["END"]})
    message = check_stream(run(tgi_answer.stream(c), [tgi_stream(["a", "<|im_end|>", "END"], "stop_sequence")]))
    assert message["content"] == [{"type": "text", "text": "a"}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    c = tgi_ctx({"stream": True, "max_tokens": 2})
    message = check_stream(run(tgi_answer.stream(c), [tgi_stream(["a", " b"], "length")]))
    assert message["stop_reason"] == "max_tokens"


def test_tgi_stream_error_events() -> None:
    c = tgi_ctx({"stream": True})
    t = tgi_answer.stream(c)
    error = b'data: {"error": "Request failed during generation: boom", "error_type": "generation"}\n\n'
    with pytest.raises(GatewayError) as info:
        t.feed(0, error)
    assert info.value.status == 500
    t = tgi_answer.stream(c)
    out = t.feed(0, b"data:" + orjson.dumps(tok("Hi", 1)) + b"\n\n")
    with pytest.raises(GatewayError) as info:
        t.feed(0, error)
    message = check_stream(out + t.fail(info.value))
    assert message["error"]["type"] == "api_error" and "boom" in message["error"]["message"]


def tgi_generate(text: str, reason: str, generated: int) -> dict[str, Any]:
    details = {"finish_reason": reason, "generated_tokens": generated, "seed": None, "prefill": [], "tokens": []}
    return {"generated_text": text, "details": details}


def test_tgi_answers() -> None:
    c = tgi_ctx({"stop_sequences": ["END"]})
    out = tgi_answer(tgi_generate("one two END", "stop_sequence", 3), c)
    assert out["content"] == [{"type": "text", "text": "one two "}]
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")
    assert out["usage"] == {"input_tokens": 9, "output_tokens": 3} and out["model"] == "claude-x"
    c = tgi_ctx({"stop_sequences": ["END"]})
    assert tgi_answer(tgi_generate("done<|im_end|>", "stop_sequence", 2), c)["stop_reason"] == "end_turn"
    c = tgi_ctx({})
    assert tgi_answer(tgi_generate("a b", "length", 2), c)["stop_reason"] == "max_tokens"
    assert tgi_answer(tgi_generate("a b", "eos_token", 3), tgi_ctx({}))["stop_reason"] == "end_turn"


def test_tgi_errors_name_anthropic_fields() -> None:
    c = tgi_ctx({})
    c.reply_headers = [{}]
    body = orjson.dumps({"error": "Input validation error: `max_new_tokens` must be <= 10", "error_type": "validation"})
    error = tgi_answer.error(422, body, c)
    assert error is not None and error.status == 400 and error.param == "max_tokens"
    overloaded = tgi_answer.error(429, b'{"error": "Model is overloaded", "error_type": "overloaded"}', c)
    assert overloaded is not None and overloaded.anthropic_body()["error"]["type"] == "rate_limit_error"


def test_count_tokens_answer() -> None:
    tokens = [{"id": 1, "text": "", "start": 0, "stop": 0}, {"id": 5, "text": "Hi", "start": 0, "stop": 2}]
    assert count_tokens_answer(tokens, ctx()) == {"input_tokens": 2}
    with pytest.raises(UpstreamError):
        count_tokens_answer({"tokens": []}, ctx())
    error = count_tokens_answer.error(422, b'{"error": "bad", "error_type": "validation"}', ctx())
    assert error is not None and error.status == 400
