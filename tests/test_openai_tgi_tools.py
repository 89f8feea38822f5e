"""Tool calls in TGI answers and streams → OpenAI ``tool_calls``, through chatAnsTGItoOpenAI (plain data)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from mooltiproxy.mappers.openai_tgi import chat_request
from mooltiproxy.mappers.openai_tgi_answers import chat_answer
from mooltiproxy.plugin import MappingContext
from mooltiproxy.sse import SSEDecoder

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
HERMES = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
STOP = "<|im_end|>"


def prompter(messages: list[dict[str, Any]], ctx: MappingContext) -> tuple[str, list[str]]:
    return " ".join(str(m.get("content")) for m in messages), [STOP]


def mapped(body: dict[str, Any], tool_format: str | None = "hermes") -> MappingContext:
    entry = {"tool_format": tool_format} if tool_format is not None else {}
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate", prompter=prompter, entry=entry)
    payload: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], **body}
    ctx.payload = payload
    asyncio.run(chat_request(payload, ctx))
    return ctx


def generated(text: str, reason: str = "eos_token") -> dict[str, Any]:
    details = {"finish_reason": reason, "generated_tokens": 9, "seed": None, "prefill": [], "tokens": []}
    return {"generated_text": text, "details": details}


# -- answers


def test_answer_with_a_tool_call() -> None:
    ctx = mapped({"tools": TOOLS})
    body = chat_answer(generated("I will check.\n" + HERMES + STOP, "stop_sequence"), ctx)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] == "I will check."
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) > 20
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_answer_with_only_calls_has_null_content_and_unique_ids() -> None:
    ctx = mapped({"tools": TOOLS, "tool_choice": "auto"})
    body = chat_answer(generated(HERMES + "\n" + HERMES.replace("Paris", "Rome")), ctx)
    message = body["choices"][0]["message"]
    assert message["content"] is None
    ids = [c["id"] for c in message["tool_calls"]]
    assert len(set(ids)) == 2
    assert [json.loads(c["function"]["arguments"])["city"] for c in message["tool_calls"]] == ["Paris", "Rome"]


@pytest.mark.parametrize(
    ("body", "tool_format"),
    [
        ({}, "hermes"),  # no tools in the request
        ({"tools": []}, "hermes"),
        ({"tools": TOOLS, "tool_choice": "none"}, "hermes"),
        ({"tools": TOOLS}, "none"),
        ({"tools": TOOLS}, None),
    ],
)
def test_no_parsing_unless_tools_and_a_format(body: dict[str, Any], tool_format: str | None) -> None:
    ctx = mapped(body, tool_format)
    answer = chat_answer(generated(HERMES), ctx)
    choice = answer["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": HERMES, "refusal": None}
    assert choice["finish_reason"] == "stop"


def test_a_malformed_call_stays_content() -> None:
    ctx = mapped({"tools": TOOLS})
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    choice = chat_answer(generated(text, "length"), ctx)["choices"][0]
    assert choice["message"]["content"] == text and "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "length"


def test_each_choice_is_parsed_on_its_own() -> None:
    ctx = mapped({"tools": TOOLS, "n": 2, "temperature": 0.5})
    body = chat_answer([generated(HERMES), generated("Sunny.")], ctx)
    first, second = body["choices"]
    assert first["finish_reason"] == "tool_calls" and first["message"]["tool_calls"]
    assert second["finish_reason"] == "stop" and second["message"]["content"] == "Sunny."


def test_llama3_and_mistral_answers() -> None:
    ctx = mapped({"tools": TOOLS}, "llama3")
    llama = chat_answer(generated('{"name": "get_weather", "parameters": {"city": "Paris"}}'), ctx)
    assert llama["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    ctx = mapped({"tools": TOOLS}, "mistral")
    text = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    mistral = chat_answer(generated(text), ctx)["choices"][0]
    (call,) = mistral["message"]["tool_calls"]
    assert call["id"].isalnum() and len(call["id"]) == 9  # what Mistral's templates accept back
    assert mistral["finish_reason"] == "tool_calls"


# -- streams


def tok(text: str, i: int, special: bool = False) -> dict[str, Any]:
    return {"index": i, "token": {"id": i, "text": text, "logprob": -0.5, "special": special}}


def stream_of(pieces: list[str], reason: str = "eos_token", eos: bool = True) -> bytes:
    events = [tok(p, i) for i, p in enumerate(pieces)]
    if eos:
        events.append(tok("</s>", len(pieces), special=True))
    details = {"finish_reason": reason, "generated_tokens": len(events), "seed": None, "input_length": 5}
    events[-1].update({"generated_text": "".join(pieces), "details": details})
    return b"".join(b"data: " + orjson.dumps({"generated_text": None, "details": None, **e}) + b"\n\n" for e in events)


def run_stream(ctx: MappingContext, data: bytes, cut: int | None = None) -> list[Any]:
    t = chat_answer.stream(ctx)
    parts = [data] if cut is None else [data[:cut], data[cut:]]
    out = b"".join(t.feed(0, p) for p in parts) + t.end(0) + t.finish()
    decoder = SSEDecoder()
    return [e if e == "[DONE]" else orjson.loads(e) for e in decoder.feed(out)]


def deltas(chunks: list[Any]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if isinstance(c, dict) and c["choices"]]


def tokens_of(text: str) -> list[str]:
    return [text[i : i + 3] for i in range(0, len(text), 3)]


def test_stream_with_a_tool_call() -> None:
    ctx = mapped({"tools": TOOLS, "stream": True})
    chunks = run_stream(ctx, stream_of(tokens_of("Checking. " + HERMES)))
    assert chunks[-1] == "[DONE]"
    found = deltas(chunks)
    text = "".join(d.get("content") or "" for d in found)
    assert text == "Checking. "
    calls = [d["tool_calls"][0] for d in found if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert all(c.get("id") is None for c in calls[1:])
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}


def test_stream_of_only_calls_starts_with_the_role() -> None:
    ctx = mapped({"tools": TOOLS, "stream": True}, "llama3")
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_weather", "parameters": {}}'
    found = deltas(run_stream(ctx, stream_of(tokens_of(text))))
    assert found[0] == {"role": "assistant", "content": None}
    heads = [d["tool_calls"][0] for d in found if "tool_calls" in d and "id" in d["tool_calls"][0]]
    assert [h["index"] for h in heads] == [0, 1] and heads[0]["id"] != heads[1]["id"]
    assert not any(d.get("content") for d in found)


def test_stream_that_does_not_parse_is_released_as_content() -> None:
    ctx = mapped({"tools": TOOLS, "stream": True})
    text = "Here <tool_call> is not a call"
    chunks = run_stream(ctx, stream_of(tokens_of(text), "length", eos=False))
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == text
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert not any("tool_calls" in d for d in deltas(chunks))


def test_stream_stop_sequence_ends_the_calls() -> None:
    ctx = mapped({"tools": TOOLS, "stream": True})
    pieces = [*tokens_of(HERMES), "<|im", "_end", "|>", " junk"]
    chunks = run_stream(ctx, stream_of(pieces, "stop_sequence", eos=False))
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_without_tools_is_unchanged() -> None:
    with_format = mapped({"stream": True})
    text = "Plain <tool_call> text"
    data = stream_of(tokens_of(text))
    chunks = run_stream(with_format, data)
    assert [d.get("content") for d in deltas(chunks)][1:-1] == tokens_of(text)  # one delta per token, none held


def test_stream_n_choices_each_on_its_own() -> None:
    ctx = mapped({"tools": TOOLS, "stream": True, "n": 2, "temperature": 0.5})
    t = chat_answer.stream(ctx)
    out = t.feed(0, stream_of(tokens_of(HERMES))) + t.feed(1, stream_of(["Sun", "ny."])) + t.end(0) + t.end(1)
    out += t.finish()
    chunks = [orjson.loads(e) for e in SSEDecoder().feed(out) if e != "[DONE]"]
    ends = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    finish = {c["index"]: c["finish_reason"] for c in ends}
    assert finish == {0: "tool_calls", 1: "stop"}
    second = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"][0]["index"] == 1)
    assert second == "Sunny."


@pytest.mark.parametrize("cut", range(0, 400, 7))
def test_stream_split_anywhere_gives_the_same_calls(cut: int) -> None:
    ctx = mapped({"tools": TOOLS, "stream": True})
    data = stream_of(tokens_of("Ok. " + HERMES))
    chunks = run_stream(ctx, data, cut)
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == "Ok. "
