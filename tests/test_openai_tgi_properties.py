"""Every valid OpenAI request becomes TGI requests that TGI's validation accepts, or a documented 400."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mooltiproxy.errors import BadRequest
from mooltiproxy.mappers.openai_tgi import chat_request, text_request
from mooltiproxy.plugin import Fanout, MappingContext
from mooltiproxy.tgisim.validation import Limits, TgiError, parse_generate_request, validate

LIMITS = Limits()
UNKNOWN = ("user", "logit_bias", "metadata", "store", "service_tier", "tools", "tool_choice", "parallel_tool_calls")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def join(messages: list[dict[str, Any]], ctx: MappingContext) -> tuple[str, list[str]]:
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content)
        parts.append(content or "")
    return "\n".join(parts), ["\nuser:", "</s>"]


def unit(low: float, high: float) -> st.SearchStrategy[float | int | None]:
    """Any value of the range, with more weight on both ends (TGI reads 32-bit floats)."""
    return (
        st.none()
        | st.floats(low, high)
        | st.integers(int(low), int(high))
        | st.floats(high - 1e-8, high)
        | st.floats(low, low + 1e-30)
    )


words = st.text(max_size=12)
some_words = st.text(min_size=1, max_size=12)
stop = st.none() | words | st.lists(words, min_size=1, max_size=4)
content = (
    some_words
    | some_words
    | st.just("")
    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": words}), min_size=1, max_size=2)
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "developer"]), "content": content}
)
TOOL_CALLER: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": []}
assistant_with_tools = st.just(TOOL_CALLER)
schema = st.sampled_from(
    [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {"type": "object", "properties": {"n": {"type": "integer"}, "b": {"type": "boolean"}}},
        {"type": "object"},
        {"type": "array", "items": {"type": "integer"}},
    ]
)
response_format = (
    st.none()
    | st.sampled_from([{"type": "text"}, {"type": "json_object"}])
    | st.builds(
        lambda s, strict: {"type": "json_schema", "json_schema": {"name": "answer", "schema": s, "strict": strict}},
        schema,
        st.booleans(),
    )
)
unknown = st.dictionaries(
    st.sampled_from(UNKNOWN),
    st.sampled_from([None, "x", {"1": -100}, {"k": "v"}, True, [{"type": "function", "function": {"name": "f"}}]]),
    max_size=2,
)


def common() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "model": st.none() | st.sampled_from(["gpt-4o-mini", "tgi"]),
        "temperature": unit(0, 2),
        "top_p": unit(0, 1),
        "n": st.none() | st.integers(1, 4),
        "stop": stop,
        "seed": st.none() | st.integers(0, 2**63 - 1) | st.integers(0, 100) | st.integers(-(2**63), 2**63 - 1),
        "frequency_penalty": unit(-2, 2),
        "presence_penalty": unit(-2, 2),
        "stream": st.none() | st.booleans(),
        "stream_options": st.none() | st.fixed_dictionaries({"include_usage": st.booleans()}),
    }


def without_nones(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**body, **extra}.items() if v is not None}


chat_bodies = st.builds(
    without_nones,
    st.fixed_dictionaries(
        {
            **common(),
            "messages": st.lists(message | assistant_with_tools, min_size=1, max_size=4),
            "max_tokens": st.none() | st.none() | st.integers(1, 5000) | st.integers(0, 20),
            "max_completion_tokens": st.none() | st.none() | st.integers(1, 5000) | st.integers(0, 20),
            "logprobs": st.none() | st.booleans(),
            "response_format": response_format,
        }
    ).flatmap(
        lambda body: st.fixed_dictionaries(
            {"top_logprobs": st.none() | st.integers(0, 20)} if body.get("logprobs") else {}
        ).map(lambda extra: {**body, **extra})
    ),
    unknown,
)

prompt = (
    some_words
    | some_words
    | st.lists(some_words, min_size=1, max_size=3)
    | st.lists(words, min_size=1, max_size=3)
    | st.lists(st.integers(0, 50000), min_size=1, max_size=4)
    | st.lists(st.lists(st.integers(0, 50000), min_size=1, max_size=3), min_size=1, max_size=2)
)
text_bodies = st.builds(
    without_nones,
    st.fixed_dictionaries(
        {
            **common(),
            "prompt": prompt,
            "max_tokens": st.none() | st.integers(1, 5000) | st.integers(0, 20),
            "logprobs": st.none() | st.none() | st.integers(0, 5),
            "echo": st.none() | st.booleans(),
            "best_of": st.none() | st.none() | st.integers(0, 3) | st.integers(0, 20),
            "suffix": st.none() | st.none() | st.just("") | words,
        }
    ),
    unknown,
)


def documented_refusal(body: dict[str, Any], error: BadRequest, chat: bool, strict: bool) -> bool:
    """Whether ``error`` is one of the documented refusals, and ``body`` has what triggers it."""
    param = error.param
    n = body.get("n", 1)
    if strict and param in body and param in UNKNOWN:
        return True
    if strict and param == "top_logprobs":  # clamped to TGI's limit, unless strict
        return int(body["top_logprobs"]) > LIMITS.max_top_n_tokens
    if param == "seed":
        return int(body["seed"]) < 0
    if param in ("max_tokens", "max_completion_tokens"):
        return body.get(param) == 0
    if param == "response_format":
        spec = body["response_format"].get("json_schema", {})
        return "properties" not in spec.get("schema", {"properties": {}})
    if param == "messages":  # the rendered prompt is empty
        return join(body["messages"], MappingContext(target="", path="", upstream_path=""))[0] == ""
    if chat:
        return False
    prompt = body["prompt"]
    if param == "prompt":
        items = prompt if isinstance(prompt, list) else [prompt]
        return any(not isinstance(p, str) or p == "" for p in items)
    if param == "echo":
        return bool(body.get("echo")) and body.get("logprobs") is not None
    if param == "suffix":
        return bool(body.get("suffix"))
    if param == "best_of":
        best_of = body["best_of"]
        return 1 <= best_of < n or (best_of > 1 and (bool(body.get("stream")) or best_of > LIMITS.max_best_of))
    return False


def check(body: dict[str, Any], chat: bool, strict: bool = False) -> None:
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate", prompter=join, options={"strict": strict})
    mapper = chat_request if chat else text_request
    try:
        result = asyncio.run(mapper(body, ctx))
    except BadRequest as error:
        assert error.status == 400
        assert documented_refusal(body, error, chat, strict), (error.param, error.message, body)
        return
    requests = result.payloads if isinstance(result, Fanout) else [result]
    assert ctx.stream == bool(body.get("stream"))
    assert ctx.upstream_path == ("/generate_stream" if ctx.stream else "/generate")
    for request in requests:
        assert request["parameters"]["details"] is True
        try:
            parse_generate_request(orjson.dumps(request), "application/json", limits=LIMITS)
            validate(request, stream=ctx.stream, limits=LIMITS)
        except TgiError as error:
            pytest.fail(f"TGI refuses {request}: {error.message} (from {body})")
    prompts = body.get("prompt", [None])
    prompt_count = len(prompts) if isinstance(prompts, list) else 1
    best_of = requests[0]["parameters"].get("best_of")
    assert len(requests) == prompt_count * (1 if best_of else body.get("n", 1))


@SETTINGS
@given(chat_bodies)
def test_chat_requests_are_accepted_by_tgi(body: dict[str, Any]) -> None:
    check(body, chat=True)


@SETTINGS
@given(text_bodies)
def test_legacy_requests_are_accepted_by_tgi(body: dict[str, Any]) -> None:
    check(body, chat=False)


@SETTINGS
@given(chat_bodies)
def test_strict_chat_requests(body: dict[str, Any]) -> None:
    check(body, chat=True, strict=True)


@SETTINGS
@given(text_bodies)
def test_strict_legacy_requests(body: dict[str, Any]) -> None:
    check(body, chat=False, strict=True)


def test_the_checker_can_fail() -> None:
    # what the mapper must never produce is indeed refused by the validation used above
    with pytest.raises(TgiError):
        validate({"inputs": "x", "parameters": {"temperature": 0.0}}, stream=False, limits=LIMITS)
    with pytest.raises(TgiError):
        validate({"inputs": "x", "parameters": {"top_p": 1.0}}, stream=False, limits=LIMITS)
    with pytest.raises(TgiError):
        validate({"inputs": "x", "parameters": {"seed": -1}}, stream=False, limits=LIMITS)
    with pytest.raises(TgiError):
        validate({"inputs": "x", "parameters": {"stop": "x"}}, stream=False, limits=LIMITS)
    assert not documented_refusal({"seed": 3}, BadRequest("x", param="seed"), True, False)
