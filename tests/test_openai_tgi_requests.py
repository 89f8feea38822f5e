from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import pytest

from mooltiproxy.errors import BadRequest
from mooltiproxy.mappers._common import STATE_KEY, RequestState, Slot
from mooltiproxy.mappers.identity import identity
from mooltiproxy.mappers.openai_tgi import JSON_OBJECT_REGEX, chat_request, text_request
from mooltiproxy.plugin import Fanout, MappingContext
from mooltiproxy.prompters import builtin_template, from_template
from mooltiproxy.registry import MAPPERS, import_from_string

PROMPTER_STOPS = ["\nUser:", "</s>"]


def prompter(messages: list[dict[str, Any]], ctx: MappingContext) -> tuple[str, list[str]]:
    return "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages) + "assistant:", PROMPTER_STOPS


def make_ctx(
    options: Mapping[str, Any] | None = None,
    entry: Mapping[str, Any] | None = None,
    upstream_path: str = "/generate",
    **kwargs: Any,
) -> MappingContext:
    return MappingContext(
        target="tgi",
        path="/v1/chat/completions",
        upstream_path=upstream_path,
        options=options,
        entry=entry,
        prompter=kwargs.pop("prompter", prompter),
        **kwargs,
    )


def chat(ctx: MappingContext | None = None, **body: Any) -> Any:
    payload = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body}
    return asyncio.run(chat_request(payload, ctx if ctx is not None else make_ctx()))


def text(ctx: MappingContext | None = None, **body: Any) -> Any:
    payload = {"model": "m", "prompt": "Once", **body}
    return asyncio.run(text_request(payload, ctx if ctx is not None else make_ctx()))


def params(request: Any) -> dict[str, Any]:
    assert isinstance(request, dict)
    result = request["parameters"]
    assert isinstance(result, dict)
    return result


def state(ctx: MappingContext) -> RequestState:
    value = ctx.state[STATE_KEY]
    assert isinstance(value, RequestState)
    return value


def refused(call: Any, param: str | None) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        call()
    assert info.value.status == 400
    assert info.value.param == param
    return info.value


# -- names


@pytest.mark.parametrize("name", ["identity", "textReqOpenAItoTGI", "chatReqOpenAItoTGI"])
def test_builtin_names_resolve(name: str) -> None:
    assert callable(import_from_string(MAPPERS[name]))


def test_identity_returns_the_payload() -> None:
    payload = {"a": [1]}
    assert identity(payload, make_ctx()) is payload


# -- prompt, defaults


def test_chat_defaults() -> None:
    ctx = make_ctx()
    request = chat(ctx)
    assert request == {
        "inputs": "user: Hi\nassistant:",
        "parameters": {"details": True, "do_sample": True, "stop": PROMPTER_STOPS},
    }
    st = state(ctx)
    assert st.chat and st.model == "m" and st.stops == tuple(PROMPTER_STOPS)
    assert st.slots == (Slot(0, 0, 1),)
    assert st.id.startswith("chatcmpl-") and re.fullmatch(r"[0-9a-f]{32}", st.id[9:])
    assert isinstance(st.created, int) and st.created > 1_600_000_000
    assert not ctx.stream and ctx.upstream_path == "/generate"


def test_text_defaults() -> None:
    ctx = make_ctx()
    request = text(ctx)
    assert request == {"inputs": "Once", "parameters": {"details": True, "do_sample": True, "max_new_tokens": 16}}
    assert state(ctx).id.startswith("cmpl-") and not state(ctx).chat


def test_ids_are_unique() -> None:
    ids = set()
    for _ in range(200):
        ctx = make_ctx()
        chat(ctx)
        ids.add(state(ctx).id)
    assert len(ids) == 200


@pytest.mark.parametrize(
    ("body_model", "options", "expected"),
    [("mine", {"model": "conf"}, "mine"), (None, {"model": "conf"}, "conf"), (None, {}, "tgi")],
)
def test_answered_model(body_model: str | None, options: dict[str, Any], expected: str) -> None:
    ctx = make_ctx(options)
    chat(ctx, model=body_model)
    assert state(ctx).model == expected


def test_message_content_forms_are_passed_to_the_prompter() -> None:
    seen: list[Any] = []

    def spy(messages: list[dict[str, Any]], ctx: MappingContext) -> str:
        seen.append(messages)
        return "prompt"

    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "Hi"},
    ]
    request = asyncio.run(chat_request({"model": "m", "messages": messages}, make_ctx(prompter=spy)))
    assert seen == [messages]
    assert params(request) == {"details": True, "do_sample": True}
    assert isinstance(request, dict) and request["inputs"] == "prompt"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        ("Hi", "messages"),
        ([{"content": "x"}], "messages"),
        ([1], "messages"),
    ],
)
def test_bad_messages(messages: Any, param: str) -> None:
    refused(lambda: asyncio.run(chat_request({"messages": messages}, make_ctx())), param)


def test_messages_are_checked_once_per_request() -> None:
    reads: list[str] = []

    class Message(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            reads.append(key)
            return super().get(key, default)

    ctx = make_ctx(prompter=from_template, template=builtin_template("chatml"))
    request = asyncio.run(chat_request({"messages": [Message(role="user", content="Hi")]}, ctx))
    assert isinstance(request, dict) and request["inputs"].endswith("Hi<|im_end|>\n<|im_start|>assistant\n")
    assert reads.count("role") == 1


@pytest.mark.parametrize("content", [5, 1.5, True, {"text": "Hi"}])
def test_message_content_of_a_wrong_type_is_refused(content: Any) -> None:
    calls: list[Any] = []
    ctx = make_ctx(prompter=lambda m, c: calls.append(m) or "prompt")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    error = refused(lambda: asyncio.run(chat_request({"messages": messages}, ctx)), "messages")
    assert error.message == "messages[1].content must be a string or a list of text parts"
    assert calls == []


def test_empty_rendered_prompt() -> None:
    refused(lambda: chat(make_ctx(prompter=lambda m, c: "")), "messages")


def test_no_prompter() -> None:
    ctx = MappingContext(target="t", path="/", upstream_path="/generate")
    refused(lambda: chat(ctx), "messages")


def test_body_must_be_an_object() -> None:
    refused(lambda: asyncio.run(chat_request([1], make_ctx())), None)
    refused(lambda: asyncio.run(text_request("x", make_ctx())), None)


# -- sampling


def test_temperature_zero_is_greedy() -> None:
    p = params(chat(temperature=0, top_p=0.5, top_k=3))
    assert p["do_sample"] is False
    assert "temperature" not in p and "top_p" not in p and "top_k" not in p


def test_top_p_zero_is_greedy() -> None:
    p = params(chat(temperature=0.8, top_p=0))
    assert p["do_sample"] is False and "temperature" not in p and "top_p" not in p


def test_temperature_positive_samples() -> None:
    p = params(chat(temperature=0.7, top_p=0.9))
    assert p["do_sample"] is True and p["temperature"] == 0.7 and p["top_p"] == 0.9


def test_temperature_one_and_top_p_one_are_defaults() -> None:
    p = params(chat(temperature=1, top_p=1))
    assert p["do_sample"] is True and "temperature" not in p and "top_p" not in p


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", "hot"),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", True),
        ("top_p", 1.5),
        ("top_p", [0.5]),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -3),
        ("n", 0),
        ("n", 129),
        ("n", 1.5),
        ("seed", "1"),
        ("seed", 2**64),
        ("max_tokens", -1),
        ("max_tokens", "10"),
        ("logprobs", 1),
        ("top_logprobs", 21),
        ("stream", "yes"),
        ("model", 3),
        ("stream_options", "usage"),
        ("top_k", 0),
        ("typical_p", 0),
        ("repetition_penalty", 0),
        ("truncate", 0),
    ],
)
def test_wrong_values_name_the_parameter(name: str, value: Any) -> None:
    body = {name: value}
    if name == "stream_options":
        body["stream"] = True
    refused(lambda: chat(**body), name)


def test_extensions() -> None:
    p = params(chat(top_k=40, typical_p=0.9, repetition_penalty=1.2, truncate=100, presence_penalty=1))
    assert (p["top_k"], p["typical_p"], p["repetition_penalty"], p["truncate"]) == (40, 0.9, 1.2, 100)


# -- stop


def test_stop_string() -> None:
    assert params(text(stop="\n"))["stop"] == ["\n"]


def test_stop_list_drops_empty_and_duplicates() -> None:
    assert params(text(stop=["a", "", "b", "a"]))["stop"] == ["a", "b"]
    assert "stop" not in params(text(stop=["", ""]))
    assert "stop" not in params(text(stop=""))
    assert "stop" not in params(text(stop=None))


def test_stop_too_many() -> None:
    refused(lambda: text(stop=["a", "b", "c", "d", "e"]), "stop")


@pytest.mark.parametrize("value", [3, ["a", 1], {"a": 1}])
def test_stop_wrong_type(value: Any) -> None:
    refused(lambda: text(stop=value), "stop")


def test_stop_merged_with_prompter_stops() -> None:
    ctx = make_ctx()
    assert params(chat(ctx, stop=["x", "</s>"]))["stop"] == ["\nUser:", "</s>", "x"]
    assert state(ctx).stops == ("\nUser:", "</s>", "x")


def test_stop_merge_sends_prompter_stops_first_and_keeps_every_stop() -> None:
    # the template's end-of-turn stops are never pushed out by the client's
    ctx = make_ctx()
    assert params(chat(ctx, stop=["a", "b", "c"]))["stop"] == ["\nUser:", "</s>", "a", "b"]
    assert state(ctx).stops == ("\nUser:", "</s>", "a", "b", "c")  # the answer is cut on all of them
    ctx = make_ctx()
    assert params(chat(ctx, stop=["a", "b", "c", "d"]))["stop"] == ["\nUser:", "</s>", "a", "b"]
    assert state(ctx).stops == ("\nUser:", "</s>", "a", "b", "c", "d")


def test_stop_limit_from_options() -> None:
    ctx = make_ctx({"max_stop_sequences": 2})
    assert params(chat(ctx, stop="a"))["stop"] == ["\nUser:", "</s>"]
    assert state(ctx).stops == ("\nUser:", "</s>", "a")
    refused(lambda: chat(make_ctx({"max_stop_sequences": 2}), stop=["a", "b", "c"]), "stop")
    ctx = make_ctx({"max_stop_sequences": 1}, prompter=lambda m, c: ("p", ["</s>", "\nUser:", "</s>", ""]))
    assert params(chat(ctx))["stop"] == ["</s>"]
    assert state(ctx).stops == ("</s>", "\nUser:")


# -- lengths, seed, penalties


def test_max_tokens() -> None:
    assert params(text(max_tokens=5))["max_new_tokens"] == 5
    assert params(chat(max_tokens=7))["max_new_tokens"] == 7
    assert params(chat(max_completion_tokens=9, max_tokens=7))["max_new_tokens"] == 9
    assert "max_new_tokens" not in params(chat(max_tokens=None))


def test_max_tokens_zero() -> None:
    refused(lambda: text(max_tokens=0), "max_tokens")
    refused(lambda: chat(max_completion_tokens=0), "max_completion_tokens")


def test_seed() -> None:
    assert params(chat(seed=42))["seed"] == 42
    assert params(chat(seed=0))["seed"] == 0
    error = refused(lambda: chat(seed=-1), "seed")
    assert "seed" in error.message


def test_frequency_penalty() -> None:
    assert params(chat(frequency_penalty=-1.5))["frequency_penalty"] == -1.5
    assert "frequency_penalty" not in params(chat(frequency_penalty=0))


@pytest.mark.parametrize(("presence", "expected"), [(2, 2.0), (-2, 0.5), (1, 2**0.5)])
def test_presence_penalty_becomes_repetition_penalty(presence: float, expected: float) -> None:
    assert params(chat(presence_penalty=presence))["repetition_penalty"] == pytest.approx(expected)


def test_presence_penalty_zero_is_dropped() -> None:
    assert "repetition_penalty" not in params(chat(presence_penalty=0))


# -- n, prompts, best_of


def test_n_fans_out_with_distinct_seeds() -> None:
    ctx = make_ctx()
    result = chat(ctx, n=3, seed=5)
    assert isinstance(result, Fanout) and len(result.payloads) == 3
    assert [p["parameters"]["seed"] for p in result.payloads] == [5, 6, 7]
    assert all(p["inputs"] == "user: Hi\nassistant:" for p in result.payloads)
    assert state(ctx).slots == (Slot(0, 0, 1), Slot(0, 1, 1), Slot(0, 2, 1))


def test_n_without_seed() -> None:
    result = chat(n=2)
    assert isinstance(result, Fanout)
    assert all("seed" not in p["parameters"] for p in result.payloads)


def test_prompt_list_times_n() -> None:
    ctx = make_ctx()
    result = text(ctx, prompt=["A", "B"], n=2)
    assert isinstance(result, Fanout)
    assert [p["inputs"] for p in result.payloads] == ["A", "A", "B", "B"]
    assert [s.choice for s in state(ctx).slots] == [0, 1, 2, 3]
    assert [s.prompt for s in state(ctx).slots] == [0, 0, 1, 1]


def test_single_prompt_list_is_not_a_fanout() -> None:
    assert text(prompt=["A"])["inputs"] == "A"


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2]], ["a", [1]]])
def test_token_prompts_refused(prompt: Any) -> None:
    error = refused(lambda: text(prompt=prompt), "prompt")
    assert "token" in error.message


@pytest.mark.parametrize("prompt", ["", [], None, ["a", ""], {"a": 1}, ["a", None]])
def test_bad_prompts(prompt: Any) -> None:
    refused(lambda: text(prompt=prompt), "prompt")


def test_fanout_limit() -> None:
    refused(lambda: text(make_ctx({"max_fanout": 3}), prompt=["a", "b"], n=2), "n")
    refused(lambda: text(make_ctx({"max_fanout": 1}), prompt=["a", "b"]), "prompt")


def test_best_of_uses_tgi_best_of() -> None:
    ctx = make_ctx()
    p = params(text(ctx, best_of=2, seed=3, temperature=0.5))
    assert p["best_of"] == 2 and p["do_sample"] is True and "seed" not in p
    assert state(ctx).slots == (Slot(0, 0, 1),)


def test_best_of_greater_than_n() -> None:
    ctx = make_ctx({"max_best_of": 4})
    p = params(text(ctx, best_of=4, n=2))
    assert p["best_of"] == 4
    assert state(ctx).slots == (Slot(0, 0, 2),)


def test_best_of_equal_to_n_fans_out() -> None:
    result = text(best_of=2, n=2)
    assert isinstance(result, Fanout) and all("best_of" not in p["parameters"] for p in result.payloads)


def test_best_of_greedy_is_one_request() -> None:
    p = params(text(best_of=2, temperature=0))
    assert "best_of" not in p and p["do_sample"] is False


@pytest.mark.parametrize(
    "body", [{"best_of": 2, "stream": True}, {"best_of": 2, "n": 3}, {"best_of": 3}, {"best_of": 1, "n": 2}]
)
def test_best_of_refused(body: dict[str, Any]) -> None:
    refused(lambda: text(**body), "best_of")


def test_best_of_one_or_zero_is_ignored() -> None:
    assert "best_of" not in params(text(best_of=1))
    assert "best_of" not in params(text(best_of=0))


# -- echo, suffix, logprobs


def test_echo_keeps_the_prompt() -> None:
    ctx = make_ctx()
    text(ctx, echo=True)
    assert state(ctx).echo and state(ctx).prompts == ("Once",)


def test_echo_with_logprobs_refused() -> None:
    refused(lambda: text(echo=True, logprobs=0), "echo")


def test_suffix() -> None:
    refused(lambda: text(suffix="end"), "suffix")
    refused(lambda: text(suffix=1), "suffix")
    assert text(suffix="")["inputs"] == "Once"


def test_legacy_logprobs() -> None:
    ctx = make_ctx()
    assert params(text(ctx, logprobs=3))["top_n_tokens"] == 3
    assert state(ctx).logprobs == 3
    ctx = make_ctx()
    assert "top_n_tokens" not in params(text(ctx, logprobs=0))
    assert state(ctx).logprobs == 0
    refused(lambda: text(logprobs=6), "logprobs")


def test_chat_logprobs() -> None:
    ctx = make_ctx()
    assert params(chat(ctx, logprobs=True, top_logprobs=2))["top_n_tokens"] == 2
    assert state(ctx).logprobs == 2
    ctx = make_ctx()
    assert "top_n_tokens" not in params(chat(ctx, logprobs=True))
    assert state(ctx).logprobs == 0
    ctx = make_ctx()
    assert "top_n_tokens" not in params(chat(ctx, logprobs=False, top_logprobs=3))
    assert state(ctx).logprobs is None


def test_top_logprobs_clamped_or_refused_in_strict_mode() -> None:
    ctx = make_ctx()
    assert params(chat(ctx, logprobs=True, top_logprobs=20))["top_n_tokens"] == 5
    assert state(ctx).logprobs == 5
    refused(lambda: chat(make_ctx({"strict": True}), logprobs=True, top_logprobs=20), "top_logprobs")


# -- response_format


def test_json_object() -> None:
    grammar = params(chat(response_format={"type": "json_object"}))["grammar"]
    assert grammar == {"type": "regex", "value": JSON_OBJECT_REGEX}
    regex = re.compile(JSON_OBJECT_REGEX)
    for good in ["{}", '{"a": 1}', '{"a": {"b": [1, -2.5e+3, "x\\"y"]}, "c": null, "d": true}']:
        assert regex.fullmatch(good), good
    for bad in ["[]", '"a"', "{", '{"a": }', "{'a': 1}", '{"a": 1}x']:
        assert not regex.fullmatch(bad), bad


def test_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    grammar = params(chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    assert grammar["grammar"] == {"type": "json", "value": schema}


def test_json_schema_without_schema_is_any_object() -> None:
    p = params(chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}))
    assert p["grammar"]["value"] == JSON_OBJECT_REGEX


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": []}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}},
        {"type": "json_schema"},
        {"type": "yaml"},
        "json",
    ],
)
def test_bad_response_format(response_format: Any) -> None:
    error = refused(lambda: chat(response_format=response_format), error_param(response_format))
    assert error.status == 400


def error_param(response_format: Any) -> str:
    if not isinstance(response_format, dict):
        return "response_format"
    spec = response_format.get("json_schema")
    if spec is None and response_format.get("type") == "json_schema":
        return "response_format.json_schema"
    if isinstance(spec, dict) and isinstance(spec.get("schema"), str):
        return "response_format.json_schema.schema"
    return "response_format"


def test_text_response_format() -> None:
    assert "grammar" not in params(chat(response_format={"type": "text"}))


# -- streaming


def test_stream_path_and_flags() -> None:
    ctx = make_ctx()
    chat(ctx, stream=True, stream_options={"include_usage": True})
    assert ctx.stream and ctx.upstream_path == "/generate_stream"
    assert state(ctx).include_usage


@pytest.mark.parametrize(
    ("configured", "entry", "expected"),
    [
        ("/", {}, "/generate_stream"),
        ("/v2/generate", {}, "/v2/generate_stream"),
        ("/generate", {"stream_path": "/custom"}, "/custom"),
        ("/other", {}, "/other"),
    ],
)
def test_stream_path_choice(configured: str, entry: dict[str, Any], expected: str) -> None:
    ctx = make_ctx(entry=entry, upstream_path=configured)
    text(ctx, stream=True)
    assert ctx.upstream_path == expected


def test_include_usage_needs_stream() -> None:
    ctx = make_ctx()
    chat(ctx, stream=False, stream_options={"include_usage": True})
    assert not state(ctx).include_usage and not ctx.stream


def test_stream_with_n() -> None:
    ctx = make_ctx()
    result = chat(ctx, stream=True, n=2)
    assert isinstance(result, Fanout) and len(result.payloads) == 2 and ctx.stream


# -- unknown parameters


UNKNOWN: dict[str, Any] = {
    "logit_bias": {"50256": -100},
    "user": "u1",
    "metadata": {"k": "v"},
    "parallel_tool_calls": True,
    "store": True,
    "service_tier": "auto",
}


def test_unknown_parameters_are_ignored() -> None:
    assert chat(**UNKNOWN) == chat()


@pytest.mark.parametrize("name", sorted(UNKNOWN))
def test_strict_mode_refuses_unknown_parameters(name: str) -> None:
    refused(lambda: chat(make_ctx({"strict": True}), **{name: UNKNOWN[name]}), name)


def test_strict_mode_accepts_tools_which_reach_the_template() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    chat(make_ctx({"strict": True}), tools=tools, tool_choice="auto")


def test_strict_mode_accepts_neutral_values() -> None:
    request = chat(make_ctx({"strict": True}), user=None, store=False, logit_bias={}, tools=[], temperature=0.5)
    assert params(request)["temperature"] == 0.5


def test_strict_mode_refuses_unknown_legacy_parameters() -> None:
    refused(lambda: text(make_ctx({"strict": True}), messages=[{"role": "user"}]), "messages")
    refused(lambda: chat(make_ctx({"strict": True}), echo=True), "echo")


def test_values_tgi_would_read_as_zero_or_one() -> None:
    assert params(chat(temperature=1e-5))["do_sample"] is False
    p = params(chat(top_p=1e-50))
    assert p["do_sample"] is False and "top_p" not in p
    p = params(chat(top_p=0.99999999))
    assert p["do_sample"] is True and "top_p" not in p
    assert params(chat(temperature=1e-3))["temperature"] == 1e-3
    refused(lambda: chat(typical_p=1e-60), "typical_p")
    refused(lambda: chat(repetition_penalty=1e-60), "repetition_penalty")
