from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mooltiproxy.errors import GatewayError, UpstreamError, UpstreamStatus
from mooltiproxy.mappers._common import RequestState
from mooltiproxy.mappers.openai_tgi import chat_request, text_request
from mooltiproxy.mappers.openai_tgi_answers import chat_answer, text_answer
from mooltiproxy.mappers.openai_tgi_stream import OpenAIStream
from mooltiproxy.plugin import MappingContext, StreamTranslator
from mooltiproxy.sse import SSEDecoder


def prompter(messages: list[dict[str, Any]], ctx: MappingContext) -> tuple[str, list[str]]:
    return " ".join(str(m.get("content")) for m in messages), ["\nUser:"]


def translator(body: dict[str, Any] | None = None, *, chat: bool = True) -> tuple[StreamTranslator, MappingContext]:
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate", prompter=prompter)
    payload: dict[str, Any] = {"model": "m", "stream": True}
    payload.update({"messages": [{"role": "user", "content": "Hi"}]} if chat else {"prompt": "Once"})
    payload.update(body or {})
    ctx.payload = payload
    asyncio.run((chat_request if chat else text_request)(payload, ctx))
    assert ctx.stream
    return (chat_answer if chat else text_answer).stream(ctx), ctx


def tok(text: str, i: int, logprob: float = -0.5, special: bool = False, **extra: Any) -> dict[str, Any]:
    return {"index": i, "token": {"id": i, "text": text, "logprob": logprob, "special": special}, **extra}


def final(event: dict[str, Any], text: str, reason: str, generated: int, input_length: int = 5) -> dict[str, Any]:
    details = {"finish_reason": reason, "generated_tokens": generated, "seed": None, "input_length": input_length}
    return {**event, "generated_text": text, "details": details}


def sse(events: list[dict[str, Any]], *, styles: bool = False) -> bytes:
    """TGI framing; with ``styles`` also ``data:`` without space, CRLF line ends and keep-alive comments."""
    out = b""
    for i, event in enumerate(events):
        data = orjson.dumps({"generated_text": None, "details": None, **event})
        if not styles:
            out += b"data: " + data + b"\n\n"
        elif i % 3 == 0:
            out += b"data:" + data + b"\r\n\r\n"
        elif i % 3 == 1:
            out += b":\n\ndata: " + data + b"\n\n"
        else:
            out += b"data: " + data + b"\r\n\r\n"
    return out


# " Hello world é" then a stop sequence "\nUser:" spread over three tokens
CHAT_EVENTS = [
    tok(" Hello", 1),
    tok(" wor", 2),
    tok("ld", 3),
    tok(" é", 4),
    tok("\n", 5),
    tok("User", 6),
    final(tok(":", 7), " Hello world é\nUser:", "stop_sequence", 7),
]
CHAT_STREAM = sse(CHAT_EVENTS, styles=True)


def run(t: StreamTranslator, pieces: list[bytes], index: int = 0) -> bytes:
    out = b"".join(t.feed(index, piece) for piece in pieces)
    return out + t.end(index) + t.finish()


def events(data: bytes) -> list[Any]:
    decoder = SSEDecoder()
    found = decoder.feed(data)
    assert decoder.flush() == []  # every event ends with a blank line
    return [e if e == "[DONE]" else orjson.loads(e) for e in found]


def contents(chunks: list[Any]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content", "") if c["object"].endswith("chunk") else c["choices"][0]["text"]
        for c in chunks
        if isinstance(c, dict) and c["choices"]
    )


def test_chat_stream() -> None:
    t, ctx = translator({"stream_options": {"include_usage": True}})
    assert t.content_type == "text/event-stream"
    chunks = events(run(t, [CHAT_STREAM]))
    state = ctx.state["openai_tgi"]
    assert chunks[-1] == "[DONE]"
    body = chunks[:-1]
    assert all(c["id"] == state.id and c["created"] == state.created and c["model"] == "m" for c in body)
    assert all(c["object"] == "chat.completion.chunk" for c in body)
    choices = [c["choices"][0] if c["choices"] else None for c in body]
    assert choices[0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    assert [c["delta"] for c in choices[1:5] if c] == [
        {"content": " Hello"},
        {"content": " wor"},
        {"content": "ld"},
        {"content": " é"},
    ]
    assert choices[5] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(c["usage"] is None for c in body[:-1])
    assert body[-1]["choices"] == []
    assert body[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert len(body) == 7


def test_without_include_usage_there_is_no_usage() -> None:
    t, _ = translator()
    chunks = events(run(t, [CHAT_STREAM]))
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1] == "[DONE]"


@pytest.mark.parametrize("cut", range(1, len(CHAT_STREAM)))
def test_every_split_gives_the_same_output(cut: int) -> None:
    t, ctx = translator({"stream_options": {"include_usage": True}})
    whole = run(t, [CHAT_STREAM])
    assert run(chat_answer.stream(ctx), [CHAT_STREAM[:cut], CHAT_STREAM[cut:]]) == whole


def test_byte_by_byte() -> None:
    t, ctx = translator()
    whole = run(t, [CHAT_STREAM])
    out = run(chat_answer.stream(ctx), [CHAT_STREAM[i : i + 1] for i in range(len(CHAT_STREAM))])
    assert out == whole
    assert contents(events(out)) == " Hello world é"
    assert b"User" not in out


def test_chunks_go_out_as_tokens_arrive() -> None:
    t, _ = translator()
    pieces = [sse([e]) for e in CHAT_EVENTS]
    first = events(t.feed(0, pieces[0]))
    assert [c["choices"][0]["delta"] for c in first] == [{"role": "assistant", "content": ""}, {"content": " Hello"}]
    assert contents(events(t.feed(0, pieces[1]))) == " wor"
    assert t.feed(0, pieces[4][:-3]) == b""  # half an event
    assert t.feed(0, pieces[4][-3:]) == b""  # "\n" could start the stop sequence: held
    assert t.feed(0, pieces[5]) == b""  # "\nUser" still could
    last = events(t.feed(0, pieces[6]))
    assert [c["choices"][0]["finish_reason"] for c in last] == ["stop"]


def test_nothing_is_sent_before_the_first_token() -> None:
    t, _ = translator()
    assert t.feed(0, b":\n\n") == b""
    assert t.feed(0, b"data: ") == b""


def test_held_text_that_is_not_a_stop_is_released() -> None:
    t, _ = translator()
    stream = sse([tok("a", 1), tok("\n", 2), tok("Use", 3), tok("ful", 4), final(tok("!", 5), "", "length", 5)])
    out = events(run(t, [stream]))
    assert contents(out) == "a\nUseful!"
    assert out[-2]["choices"][0]["finish_reason"] == "length"


def test_held_tail_is_flushed_when_the_generation_ends_otherwise() -> None:
    t, _ = translator()
    out = events(run(t, [sse([tok("a", 1), final(tok("\nUs", 2), "a\nUs", "length", 2)])]))
    assert contents(out) == "a\nUs"
    assert out[-2]["choices"][0]["finish_reason"] == "length"


def test_held_tail_is_released_on_a_stop_sequence_that_was_not_seen() -> None:
    # TGI stopped on a stop that was a special token's text: the held text is genuine output
    t, _ = translator()
    out = events(run(t, [sse([tok("a", 1), final(tok("\nUs", 2), "a\nUs", "stop_sequence", 2)])]))
    assert contents(out) == "a\nUs"
    assert out[-2]["choices"][0]["finish_reason"] == "stop"


def test_stop_inside_a_token_stops_the_choice() -> None:
    t, _ = translator({"stream_options": {"include_usage": True}})
    stream = sse([tok("a", 1), tok("\nUser: more", 2), tok("ignored", 3), final(tok("x", 4), "", "length", 4)])
    out = events(run(t, [stream]))
    assert contents(out) == "a"
    assert [c["choices"][0]["finish_reason"] for c in out[:-2]] == [None, None, "stop"]
    assert out[-2]["usage"]["completion_tokens"] == 2  # tokens up to the stop


def test_special_tokens_are_not_text() -> None:
    t, _ = translator({"stream_options": {"include_usage": True}})
    out = events(run(t, [sse([tok("Hi", 1), final(tok("</s>", 2, special=True), "Hi", "eos_token", 2)])]))
    assert contents(out) == "Hi" and "</s>" not in str(out)
    assert out[-3]["choices"][0]["finish_reason"] == "stop"
    assert out[-2]["usage"]["completion_tokens"] == 2


def test_empty_generation_still_has_role_and_finish() -> None:
    t, _ = translator()
    out = events(run(t, [sse([final(tok("</s>", 1, special=True), "", "eos_token", 1)])]))
    assert [c["choices"][0]["delta"] for c in out[:-1]] == [{"role": "assistant", "content": ""}, {}]


def test_legacy_stream() -> None:
    t, ctx = translator({"stop": "!", "stream_options": {"include_usage": True}}, chat=False)
    out = events(run(t, [sse([tok("Hi", 1), tok(" there", 2), final(tok("!", 3), "Hi there!", "stop_sequence", 3)])]))
    assert all(c["object"] == "text_completion" for c in out[:-1])
    assert [c["choices"] for c in out[:-1]] == [
        [{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": " there", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        [],
    ]
    assert out[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert out[-1] == "[DONE]"


def test_legacy_echo() -> None:
    t, _ = translator({"echo": True}, chat=False)
    out = events(run(t, [sse([final(tok(" upon", 1), " upon", "length", 1)])]))
    assert contents(out) == "Once upon"
    assert out[0]["choices"][0]["text"] == "Once upon"


def test_chat_logprobs_follow_their_text() -> None:
    t, _ = translator({"logprobs": True, "top_logprobs": 1})
    top = [{"id": 9, "text": "x", "logprob": -0.1, "special": False}]
    stream = sse(
        [tok("a", 1, -0.1, top_tokens=top), tok("\n", 2, -0.2, top_tokens=top), tok("b", 3, -0.3, top_tokens=top)]
        + [final(tok("\nUser:", 4, -0.4), "", "stop_sequence", 4)]
    )
    out = events(run(t, [stream]))
    with_text = [c["choices"][0] for c in out[:-1] if c["choices"][0]["delta"].get("content")]
    assert [c["delta"]["content"] for c in with_text] == ["a", "\nb"]
    assert [[e["token"] for e in c["logprobs"]["content"]] for c in with_text] == [["a"], ["\n", "b"]]
    assert with_text[0]["logprobs"]["content"][0] == {
        "token": "a",
        "logprob": -0.1,
        "bytes": [97],
        "top_logprobs": [{"token": "x", "logprob": -0.1, "bytes": [120]}],
    }
    assert with_text[0]["logprobs"]["refusal"] is None


def test_legacy_logprobs_in_chunks() -> None:
    t, _ = translator({"logprobs": 0}, chat=False)
    out = events(run(t, [sse([tok("a", 1, -0.1), final(tok("bc", 2, -0.2), "abc", "length", 2)])]))
    assert [c["choices"][0]["logprobs"] for c in out[:2]] == [
        {"tokens": ["a"], "token_logprobs": [-0.1], "top_logprobs": [{"a": -0.1}], "text_offset": [0]},
        {"tokens": ["bc"], "token_logprobs": [-0.2], "top_logprobs": [{"bc": -0.2}], "text_offset": [1]},
    ]


@pytest.mark.parametrize(
    ("error_type", "status"),
    [("validation", 400), ("overloaded", 429), ("generation", 500), ("incomplete_generation_stream", 502)],
)
def test_error_event_first_raises(error_type: str, status: int) -> None:
    t, _ = translator()
    with pytest.raises(UpstreamStatus) as info:
        t.feed(0, b'data: {"error":"boom","error_type":"' + error_type.encode() + b'"}\n\n')
    assert info.value.status == status and info.value.message == "boom"


def test_error_after_tokens_raises_then_fail_writes_an_error_event() -> None:
    t, _ = translator()
    assert t.feed(0, sse([tok("Hi", 1)]))
    with pytest.raises(GatewayError) as info:
        t.feed(0, b'data:{"error":"Request failed during generation: OOM","error_type":"generation"}\n\n')
    tail = t.fail(info.value)
    assert tail.startswith(b"data: {") and tail.endswith(b"\n\n") and b"event:" not in tail
    assert events(tail) == [
        {
            "error": {
                "message": "Request failed during generation: OOM",
                "type": "server_error",
                "param": None,
                "code": "generation_failed",
            }
        }
    ]


def test_truncated_stream_raises() -> None:
    t, _ = translator()
    assert t.feed(0, sse([tok("Hi", 1)]))
    with pytest.raises(UpstreamError, match="upstream stream ended before the generation finished"):
        t.end(0)


def test_finish_before_every_stream_ended_raises() -> None:
    t, _ = translator({"n": 2})
    t.feed(0, sse([final(tok("a", 1), "a", "length", 1)]))
    t.end(0)
    with pytest.raises(UpstreamError):
        t.finish()


def test_invalid_event_raises() -> None:
    t, _ = translator()
    with pytest.raises(UpstreamError):
        t.feed(0, b"data: not json\n\n")
    t, _ = translator()
    with pytest.raises(UpstreamError):
        t.feed(0, b"data: [1]\n\n")


def test_n2_interleaved() -> None:
    t, ctx = translator({"n": 2, "stream_options": {"include_usage": True}})
    a = sse([tok("A1", 1), tok(" A2", 2), final(tok("</s>", 3, special=True), "A1 A2", "eos_token", 3)])
    b = sse([tok("B1", 1), final(tok(" B2", 2), "B1 B2", "length", 2)])
    out = b""
    for i in range(max(len(a), len(b))):  # interleave byte by byte
        out += t.feed(0, a[i : i + 1]) + t.feed(1, b[i : i + 1])
    out += t.end(1) + t.end(0) + t.finish()
    chunks = events(out)
    assert chunks[-1] == "[DONE]"
    per_index: dict[int, list[Any]] = {0: [], 1: []}
    for c in chunks[:-2]:
        (choice,) = c["choices"]
        per_index[choice["index"]].append(choice)
    for index, expected_text, reason in ((0, "A1 A2", "stop"), (1, "B1 B2", "length")):
        got = per_index[index]
        assert got[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in got[1:]) == expected_text
        assert got[-1] == {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
    assert chunks[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


def test_prompt_list_stream_indexes_and_usage() -> None:
    t, _ = translator({"prompt": ["A", "B"], "n": 2, "stream_options": {"include_usage": True}}, chat=False)
    out = b""
    for index in range(4):
        out += t.feed(index, sse([final(tok(f"t{index}", 1), "", "length", 1, input_length=index // 2 + 1)]))
        out += t.end(index)
    chunks = events(out + t.finish())
    texts = {c["choices"][0]["index"]: c["choices"][0]["text"] for c in chunks[:-2] if c["choices"][0]["text"]}
    assert texts == {0: "t0", 1: "t1", 2: "t2", 3: "t3"}
    assert chunks[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_translator_without_request_state() -> None:
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate_stream")
    ctx.payload = {"model": "x", "stop": "!"}
    t = chat_answer.stream(ctx)
    out = events(run(t, [sse([tok("Hi", 1), final(tok("!", 2), "Hi!", "stop_sequence", 2)])]))
    assert contents(out) == "Hi" and out[0]["model"] == "x"


def first_stop_reference(text: str, stops: list[str]) -> str:
    """What OpenAI returns: the text before the stop sequence that completes first."""
    for k in range(1, len(text) + 1):
        ends = [s for s in stops if text[:k].endswith(s)]
        if ends:
            return text[: k - max(map(len, ends))]
    return text


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.text("ab\n", min_size=1, max_size=3), min_size=1, max_size=8),
    st.lists(st.text("ab\n", min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_stop_sequences_never_reach_the_client(pieces: list[str], stops: list[str]) -> None:
    text = "".join(pieces)
    state = RequestState(chat=True, id="chatcmpl-x", created=0, model="m", stops=stops)
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate_stream")
    events_ = [tok(p, i + 1) for i, p in enumerate(pieces)]
    events_[-1] = final(events_[-1], text, "length", len(pieces))
    out = events(run(OpenAIStream(state, ctx), [sse(events_)]))
    expected = first_stop_reference(text, stops)
    assert contents(out) == expected
    assert out[-2]["choices"][0]["finish_reason"] == ("length" if expected == text else "stop")
    # the non-streamed answer agrees
    ctx.state["openai_tgi"] = state
    answer = chat_answer({"generated_text": text, "details": {"finish_reason": "length", "tokens": []}}, ctx)
    assert answer["choices"][0]["message"]["content"] == expected


def test_chunks_parse_as_the_openai_sdk_types() -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletionChunk

    t, _ = translator({"stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2})
    for chunk in events(run(t, [CHAT_STREAM]))[:-1]:
        ChatCompletionChunk.model_validate(chunk, strict=True)
    t, _ = translator({"stream_options": {"include_usage": True}, "logprobs": 2}, chat=False)
    chunks = events(run(t, [CHAT_STREAM]))[:-1]
    assert len(chunks) == 9  # 7 tokens (no stop sequence here), the finish, the usage
    for chunk in chunks:
        if chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
            chunk["choices"][0]["finish_reason"] = "length"  # the SDK's type omits the streaming null
        Completion.model_validate(chunk, strict=True)


def stream_and_answer(tokens: list[tuple[str, bool]], stops: list[str], reason: str) -> tuple[Any, Any]:
    """(content, finish reason) of the streamed and the non-streamed chat answer to the same TGI tokens."""
    state = RequestState(chat=True, id="chatcmpl-x", created=0, model="m", stops=stops)
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate_stream")
    events_ = [tok(text, i + 1, special=special) for i, (text, special) in enumerate(tokens)]
    generated = "".join(text for text, special in tokens if not special)  # TGI skips special tokens
    events_[-1] = final(events_[-1], generated, reason, len(tokens))
    out = events(run(OpenAIStream(state, ctx), [sse(events_)]))
    ctx.state["openai_tgi"] = state
    details = {"finish_reason": reason, "generated_tokens": len(tokens), "tokens": [e["token"] for e in events_]}
    choice = chat_answer({"generated_text": generated, "details": details}, ctx)["choices"][0]
    return (contents(out), out[-2]["choices"][0]["finish_reason"]), (
        choice["message"]["content"],
        choice["finish_reason"],
    )


def test_stream_and_answer_keep_the_text_before_a_special_stop_token() -> None:
    # chatml: TGI stops on "<|im_end|>", a special token, after " Hello\n<|im"-like text the gateway holds
    tokens = [(" Hello", False), ("\n", False), ("<|im_end|>", True)]
    streamed, answered = stream_and_answer(tokens, ["\n\nQ:", "<|im_end|>"], "stop_sequence")
    assert streamed == answered == (" Hello\n", "stop")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.text("ab\n", min_size=1, max_size=3), st.booleans()), min_size=1, max_size=8),
    st.lists(st.text("ab\n", min_size=1, max_size=3), min_size=1, max_size=3),
    st.sampled_from(["length", "eos_token", "stop_sequence"]),
)
def test_stream_and_answer_agree(tokens: list[tuple[str, bool]], stops: list[str], reason: str) -> None:
    streamed, answered = stream_and_answer(tokens, stops, reason)
    assert streamed == answered


def test_error_event_uses_the_headers_of_its_own_stream() -> None:
    t, ctx = translator({"n": 2})
    ctx.reply_headers = [{"retry-after": "7"}, {"retry-after": "30"}]  # filled by stream index
    assert t.feed(1, sse([tok("Hi", 1)]))
    with pytest.raises(UpstreamStatus) as info:
        t.feed(0, b'data: {"error":"busy","error_type":"overloaded"}\n\n')
    assert info.value.status == 429 and info.value.headers == {"Retry-After": "7"}
    t, ctx = translator()
    with pytest.raises(UpstreamStatus) as info:  # no headers for that stream (yet)
        t.feed(0, b'data: {"error":"busy","error_type":"overloaded"}\n\n')
    assert info.value.headers == {}
