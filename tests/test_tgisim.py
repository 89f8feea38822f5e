"""The TGI simulator: pure validation and model checks, then the real server over loopback HTTP, spoken to with
raw aiohttp requests and with the official ``text-generation`` client."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import text_generation  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from text_generation import errors as tg_errors

from mooltiproxy.tgisim import Limits, SimSettings, model, start_simulator
from mooltiproxy.tgisim.__main__ import settings_from_args
from mooltiproxy.tgisim.validation import TgiError, count_tokens, parse_generate_request, validate

JSON = "application/json"
LIMITS = Limits()
SYNTAX = "Failed to parse the request body as JSON: "
DATA = "Failed to deserialize the JSON body into the target type: "
client_warnings = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client calls pydantic's .dict()


# -- helpers ---------------------------------------------------------------------------------------------------
def parse(body: bytes | str, content_type: str | None = JSON, compat: bool = False) -> dict[str, Any]:
    raw = body.encode() if isinstance(body, str) else body
    return parse_generate_request(raw, content_type, limits=LIMITS, compat=compat)


def rejection(body: bytes | str, content_type: str | None = JSON) -> TgiError:
    with pytest.raises(TgiError) as info:
        parse(body, content_type)
    return info.value


def failure(params: dict[str, Any] | None, *, inputs: str = "hello", stream: bool = False, **limits: Any) -> str:
    request: dict[str, Any] = {"inputs": inputs}
    if params is not None:
        request["parameters"] = params
    with pytest.raises(TgiError) as info:
        validate(request, stream=stream, limits=Limits(**limits))
    err = info.value
    assert (err.status, err.error_type, err.plain) == (422, "validation", False)
    prefix = "Input validation error: "
    assert err.message.startswith(prefix)
    return err.message[len(prefix) :]


def gen(inputs: str, **params: Any) -> model.Generation:
    request = parse(orjson.dumps({"inputs": inputs, "parameters": params}))
    return model.generate(request)


def sse_events(raw: bytes, prefix: bytes = b"data: ") -> list[Any]:
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw.split(b"\n\n")[:-1]:
        if block == b":":
            continue
        assert block.startswith(prefix) and b"\n" not in block, block
        events.append(orjson.loads(block[len(prefix) :]))
    return events


@contextlib.contextmanager
def serve(sim_settings: SimSettings | None = None) -> Iterator[str]:
    """Runs a simulator on loopback in a background thread with its own event loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, url = asyncio.run_coroutine_threadsafe(start_simulator(sim_settings), loop).result(10)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve() as base:
        yield base


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return orjson.loads(self.body)


async def _request(method: str, full_url: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    data = orjson.dumps(body) if body is not None and not isinstance(body, bytes) else body
    hdrs = {"Content-Type": JSON} if data is not None else {}
    hdrs.update(headers or {})
    async with aiohttp.ClientSession() as session, session.request(method, full_url, data=data, headers=hdrs) as r:
        return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())


def post(base: str, path: str, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return asyncio.run(_request("POST", base + path, body, headers))


def get(base: str, path: str) -> Reply:
    return asyncio.run(_request("GET", base + path))


# -- A2: the JSON extractor's plain-text rejections (pure) -----------------------------------------------------
def test_parameters_absent_means_sampling_and_present_means_field_defaults() -> None:
    absent = parse('{"inputs": "hi", "unknown": [1, {"x": null}]}')
    assert absent["parameters"]["do_sample"] is True
    present = parse('{"inputs": "hi", "parameters": {}}')["parameters"]
    assert present["do_sample"] is False
    assert (present["stop"], present["details"], present["max_new_tokens"], present["seed"]) == ([], False, None, None)
    assert set(present) == set(absent["parameters"]) and len(present) == 19
    assert parse('{"inputs": "hi", "stream": true}', compat=True)["stream"] is True
    assert "stream" not in parse('{"inputs": "hi", "stream": true}')


def test_json_object_is_an_alias_of_json_grammar() -> None:
    body = '{"inputs": "x", "parameters": {"grammar": {"type": "json_object", "value": {"properties": {}}}}}'
    assert parse(body)["parameters"]["grammar"] == {"type": "json", "value": {"properties": {}}}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/jsonx", "multipart/form-data"])
def test_wrong_content_type_is_415(content_type: str | None) -> None:
    err = rejection('{"inputs": "x"}', content_type)
    assert (err.status, err.plain, err.body()) == (415, True, b"Expected request with `Content-Type: application/json`")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON", "application/x+json"])
def test_json_content_types_are_accepted(content_type: str) -> None:
    assert parse('{"inputs": "x"}', content_type)["inputs"] == "x"


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ("", 400, SYNTAX + "EOF while parsing a value at line 1 column 0"),
        ('{"inputs": "x",', 400, SYNTAX + "EOF while parsing a value at line 1 column 15"),
        ('{"inputs": "x"} x', 400, SYNTAX + "trailing characters at line 1 column 17"),
        ('{"inputs": "x",}', 400, SYNTAX + "trailing comma at line 1 column 16"),
        ('{"inputs": "a\\qb"}', 400, SYNTAX + "inputs: invalid escape at line 1 column 15"),
        ("{}", 422, DATA + "missing field `inputs` at line 1 column 2"),
        ('{"inputs": 5}', 422, DATA + "inputs: invalid type: integer `5`, expected a string at line 1 column 12"),
        (
            '{"inputs": "x", "parameters": {"stop": "x"}}',
            422,
            DATA + 'parameters.stop: invalid type: string "x", expected a sequence at line 1 column 42',
        ),
        (
            '{"inputs": "x", "parameters": {"seed": -1}}',
            422,
            DATA + "parameters.seed: invalid value: integer `-1`, expected u64 at line 1 column 41",
        ),
        (
            '{"inputs": "x", "parameters": {"max_new_tokens": -5}}',
            422,
            DATA + "parameters.max_new_tokens: invalid value: integer `-5`, expected u32 at line 1 column 51",
        ),
        (
            '{"inputs": "x", "parameters": {"max_new_tokens": 2.0}}',
            422,
            DATA + "parameters.max_new_tokens: invalid type: floating point `2.0`, expected u32 at line 1 column 52",
        ),
        (
            '{"inputs": "x", "parameters": {"top_k": 1.5}}',
            422,
            DATA + "parameters.top_k: invalid type: floating point `1.5`, expected i32 at line 1 column 43",
        ),
        (
            '{"inputs": "x", "parameters": {"temperature": "hot"}}',
            422,
            DATA + 'parameters.temperature: invalid type: string "hot", expected f32 at line 1 column 51',
        ),
        (
            '{"inputs": "x", "parameters": {"details": null}}',
            422,
            DATA + "parameters.details: invalid type: null, expected a boolean at line 1 column 46",
        ),
        (
            '{"inputs": "x", "parameters": {"stop": ["a", 1]}}',
            422,
            DATA + "parameters.stop[1]: invalid type: integer `1`, expected a string at line 1 column 46",
        ),
        (
            '{"inputs": "x", "parameters": null}',
            422,
            DATA + "parameters: invalid type: null, expected struct GenerateParameters at line 1 column 34",
        ),
        ('{"inputs": "x", "inputs": "y"}', 422, DATA + "duplicate field `inputs` at line 1 column 24"),
    ],
)
def test_extractor_rejections_are_plain_text_like_serde(body: str, status: int, text: str) -> None:
    err = rejection(body)
    assert (err.status, err.plain, err.error_type) == (status, True, None)
    assert err.body() == text.encode()


def test_first_problem_in_document_order_wins() -> None:
    # a type error before a syntax error is a 422; the same syntax error first is a 400
    assert rejection('{"inputs": 1, "x": }').status == 422
    assert rejection('{"x": , "inputs": 1}').status == 400


def test_unknown_grammar_type_lists_the_variants() -> None:
    err = rejection('{"inputs": "x", "parameters": {"grammar": {"type": "xml", "value": ""}}}')
    expected = "unknown variant `xml`, expected one of `json`, `json_object`, `regex`, `json_schema`"
    assert err.status == 422 and expected in err.message and "parameters.grammar.type: " in err.message


# -- A4: validation rules, one by one and in order (pure) ------------------------------------------------------
RULES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("0a", {"best_of": 2, "do_sample": True}, {"max_best_of": 1}, "`best_of` != 1 is not allowed for this endpoint"),
    ("0b", {"best_of": 3, "do_sample": True}, {}, "`best_of` must be > 0 and <= 2. Given: 3"),
    ("2", {"best_of": 2}, {}, "you must use sampling when `best_of` is > 1"),
    ("3", {"temperature": 0}, {}, "`temperature` must be strictly positive"),
    ("4", {"repetition_penalty": 0}, {}, "`repetition_penalty` must be strictly positive"),
    ("5", {"frequency_penalty": 2.5}, {}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ("6", {"top_p": 1.0}, {}, "`top_p` must be > 0.0 and < 1.0"),
    ("7", {"typical_p": 0}, {}, "`typical_p` must be > 0.0 and < 1.0"),
    ("8", {"top_k": 0}, {}, "`top_k` must be strictly positive"),
    ("9", {"max_new_tokens": 0}, {}, "`max_new_tokens` must be strictly positive"),
    ("10", {"stop": ["a", "b", "c", "d", "e"]}, {}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ("11", {"seed": 1, "best_of": 2, "do_sample": True}, {}, "`seed` must not be set when `best_of` > 1"),
    ("12", {"top_n_tokens": 6}, {}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ("14", {"truncate": 0}, {}, "`truncate` must be strictly positive and less than 4095. Given: 0"),
    (
        "16",
        {"max_new_tokens": 20},
        {"max_total_tokens": 10, "max_input_tokens": 9},
        "`inputs` tokens + `max_new_tokens` must be <= 10. Given: 2 `inputs` tokens and 20 `max_new_tokens`",
    ),
    ("17", {"max_new_tokens": 1}, {"max_input_tokens": 1}, "`inputs` must have less than 1 tokens. Given: 2"),
    ("18", {"grammar": {"type": "json", "value": 5}}, {}, "grammar is not supported"),
    (
        "18-disabled",
        {"grammar": {"type": "regex", "value": "a+"}},
        {"disable_grammar_support": True},
        "grammar is not supported",
    ),
    (
        "19",
        {"grammar": {"type": "json", "value": "{not json"}},
        {},
        "grammar is not valid: key must be a string at line 1 column 2",
    ),
    (
        "19-schema",
        {"grammar": {"type": "json", "value": {"type": "objekt", "properties": {}}}},
        {},
        "grammar is not valid: \"objekt\" is not valid under any of the schemas listed in the 'anyOf' keyword",
    ),
    ("19-regex", {"grammar": {"type": "regex", "value": "(a"}}, {}, "grammar is not valid: "),
    (
        "20",
        {"grammar": {"type": "json", "value": {"type": "object"}}},
        {},
        "grammar is not valid: Grammar must have a 'properties' field",
    ),
    (
        "20-json_schema",
        {"grammar": {"type": "json_schema", "value": {"name": "n", "schema": {"type": "object"}}}},
        {},
        "grammar is not valid: Grammar must have a 'properties' field",
    ),
    (
        "21",
        {"grammar": {"type": "json", "value": '{"properties": {"a": {"$ref": "#/$defs/missing"}}}'}},
        {},
        "cannot compile regex from schema: Invalid reference path: #/$defs/missing",
    ),
]


@pytest.mark.parametrize(("rule", "params", "limits", "message"), RULES, ids=[r[0] for r in RULES])
def test_each_validation_rule_has_its_exact_message(
    rule: str, params: dict[str, Any], limits: dict[str, Any], message: str
) -> None:
    got = failure(params, **limits)
    assert got.startswith(message) if rule == "19-regex" else got == message


def test_empty_inputs_rule_13() -> None:
    assert failure({}, inputs="") == "`inputs` cannot be empty"


@pytest.mark.parametrize(
    ("params", "inputs", "limits", "expected"),
    [
        ({"temperature": 0, "top_p": 1.0}, "x", {}, "`temperature` must be strictly positive"),
        ({"best_of": 3, "temperature": -1}, "x", {}, "`best_of` must be > 0 and <= 2. Given: 3"),
        ({"top_k": 0, "max_new_tokens": 0}, "x", {}, "`top_k` must be strictly positive"),
        ({"stop": ["s"] * 5, "top_n_tokens": 9}, "", {}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"truncate": 0}, "", {}, "`inputs` cannot be empty"),
        ({"top_p": 0.0, "typical_p": 1.0}, "x", {}, "`top_p` must be > 0.0 and < 1.0"),
        (
            {"max_new_tokens": 5},
            "a b c",
            {"max_input_tokens": 2, "max_total_tokens": 6},
            "`inputs` tokens + `max_new_tokens` must be <= 6. Given: 4 `inputs` tokens and 5 `max_new_tokens`",
        ),
        (
            {"grammar": {"type": "json", "value": 5}, "max_new_tokens": 4},
            "x",
            {"max_total_tokens": 4, "max_input_tokens": 3},
            "`inputs` tokens + `max_new_tokens` must be <= 4. Given: 2 `inputs` tokens and 4 `max_new_tokens`",
        ),
    ],
)
def test_first_failing_rule_wins(params: dict[str, Any], inputs: str, limits: dict[str, Any], expected: str) -> None:
    assert failure(params, inputs=inputs, **limits) == expected


def test_streaming_only_checks_come_first() -> None:
    both = {"best_of": 2, "temperature": 0, "decoder_input_details": True}
    assert failure(both, stream=True) == "`best_of` != 1 is not supported when streaming tokens"
    assert failure({"best_of": 0}, stream=True) == "`best_of` != 1 is not supported when streaming tokens"
    assert failure({"decoder_input_details": True, "temperature": 0}, stream=True) == (
        "`decoder_input_details` == true is not supported when streaming tokens"
    )
    validate({"inputs": "x", "parameters": {"best_of": 0, "decoder_input_details": True}}, stream=False, limits=LIMITS)


def test_boundaries_that_pass() -> None:
    ok: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
        ({"frequency_penalty": 2.0, "top_p": 0.999}, "x", {}),
        ({"frequency_penalty": -2.0, "max_new_tokens": 5000}, "x", {}),  # checked per chunk of 1024
        ({"truncate": 4095}, "x", {}),
        ({"max_new_tokens": 1}, "a b", {"max_input_tokens": 3, "max_total_tokens": 4}),  # input == max_input
        ({"truncate": 2, "max_new_tokens": 1}, "a b c d e", {"max_input_tokens": 2, "max_total_tokens": 3}),
        ({"grammar": {"type": "json", "value": '{"properties": {"a": {"type": "string"}}}'}}, "x", {}),
        ({"grammar": {"type": "json_schema", "value": {"schema": {"properties": {}}}}}, "x", {}),
        ({"best_of": 2, "top_k": 5}, "x", {}),
    ]
    for params, inputs, limits in ok:
        validate({"inputs": inputs, "parameters": params}, stream=False, limits=Limits(**limits))


def test_validate_reads_raw_dicts_like_a_body() -> None:
    with pytest.raises(TgiError) as info:
        validate({"inputs": "x", "parameters": {"stop": "x"}}, stream=False, limits=LIMITS)
    assert info.value.status == 422 and info.value.plain and "expected a sequence" in info.value.message
    with pytest.raises(TgiError) as info:
        validate({"inputs": "x", "parameters": {"seed": -3}}, stream=False, limits=LIMITS)
    assert "invalid value: integer `-3`, expected u64" in info.value.message


# -- the fake model (pure) -------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.text())
def test_tokenizer_is_lossless(text: str) -> None:
    tokens = model.tokenize(text)
    assert "".join(tokens) == text
    assert count_tokens(text) == len(tokens) + 1


def test_tokenizer_splits_words_punctuation_and_newlines() -> None:
    assert model.tokenize("Hello, world!\nBye") == ["Hello", ",", " world", "!", "\n", "Bye"]
    assert count_tokens("Hello, world!") == 5


def test_say_answers_exactly_then_eos() -> None:
    g = gen("<<say:The answer is 42.>>")
    assert g.generated_text == "The answer is 42."
    assert [t.text for t in g.tokens] == ["The", " answer", " is", " 42", ".", "</s>"]
    assert g.tokens[-1] == model.Token(2, "</s>", g.tokens[-1].logprob, True)
    assert g.finish_reason == "eos_token"


def test_stop_sequence_text_is_kept() -> None:
    g = gen("<<say:one two three four>>", stop=["nothing", "o three"])
    assert (g.generated_text, g.finish_reason, len(g.tokens)) == ("one two three", "stop_sequence", 3)
    assert gen("<<say:one two three four>>", stop=["o th"]).finish_reason == "eos_token"  # only a suffix stops


def test_length_wins_over_eos_on_the_last_allowed_token() -> None:
    assert gen("<<say:a b c>>", max_new_tokens=2).finish_reason == "length"
    last = gen("<<say:a b>>", max_new_tokens=3)
    assert (last.finish_reason, last.generated_text, len(last.tokens)) == ("length", "a b", 3)
    assert gen("<<say:a b>>", max_new_tokens=4).finish_reason == "eos_token"


def test_default_answer_is_stable_and_quotes_the_last_line() -> None:
    first = gen("System line\nWhat is the capital of France?")
    assert first.generated_text == "Hello! I am a simulated model. You said: What is the capital of France?"
    assert gen("System line\nWhat is the capital of France?").tokens == first.tokens


def test_seed_varies_sampled_answers_and_is_reported_only_when_sampling() -> None:
    greedy = gen("hi", seed=7)
    assert greedy.seed is None and greedy.generated_text.startswith("Hello!")
    sampled = {gen("hi", do_sample=True, seed=s).generated_text.split(" I am")[0] for s in range(4)}
    assert len(sampled) == 4
    assert gen("hi", temperature=0.5, seed=5).seed == 5
    assert gen("hi", temperature=0.5, seed=5).generated_text == gen("hi", top_k=3, seed=5).generated_text


def test_max_new_tokens_null_uses_the_rest_of_the_context() -> None:
    request = parse('{"inputs": "<<tokens:500>>", "parameters": {}}')
    g = model.generate(request, max_total_tokens=40)
    assert (len(g.tokens), g.finish_reason) == (40 - count_tokens("<<tokens:500>>"), "length")


def test_details_helpers() -> None:
    g = gen("a b c <<say:x y>>", top_n_tokens=3, decoder_input_details=True, return_full_text=True, truncate=3)
    assert g.generated_text == "a b c <<say:x y>>x y"
    assert g.input_length == 3 and len(g.prefill) == 3 and g.prefill[0].logprob is None
    assert all(p.logprob is not None for p in g.prefill[1:])
    assert all(len(top) == 3 and top[0] == tok for top, tok in zip(g.top_tokens, g.tokens, strict=True))
    assert [t.logprob for t in g.tokens] == [-0.1, -0.2, -0.3]


def test_directives() -> None:
    d = model.parse_directives("<<delay:25>> <<error_after:2>> <<overloaded>> <<say:a>> <<say:b>>")
    assert (d.delay_ms, d.error_after, d.overloaded, d.say) == (25.0, 2, True, "b")
    failing = gen("<<error_after:2>><<say:a b c>>")
    assert failing.error == "simulated failure" and [t.text for t in failing.tokens] == ["a", " b"]
    assert model.parse_directives("plain") == model.Directives()


# -- the server over HTTP --------------------------------------------------------------------------------------
def test_generate_without_and_with_details(url: str) -> None:
    prompt = "<<say:Paris.>> What is the capital of France?"
    plain = post(url, "/generate", {"inputs": prompt, "parameters": {}})
    assert plain.status == 200 and plain.json() == {"generated_text": "Paris."}
    assert plain.headers["content-type"] == "application/json"
    assert plain.headers["x-prompt-tokens"] == str(count_tokens(prompt))
    assert (plain.headers["x-generated-tokens"], plain.headers["x-compute-type"]) == ("3", "gpu+optimized")
    detailed = post(url, "/generate", {"inputs": prompt, "parameters": {"details": True}}).json()
    details = detailed["details"]
    assert list(details) == ["finish_reason", "generated_tokens", "seed", "prefill", "tokens"]
    assert (details["finish_reason"], details["generated_tokens"], details["seed"]) == ("eos_token", 3, None)
    assert details["tokens"][-1] == {"id": 2, "text": "</s>", "logprob": -0.3, "special": True}
    assert details["prefill"] == []


def test_generate_stop_sequence_and_extras(url: str) -> None:
    body = {
        "inputs": "<<say:one two three>>",
        "parameters": {"stop": ["two"], "details": True, "top_n_tokens": 2, "decoder_input_details": True},
    }
    reply = post(url, "/generate", body).json()
    assert reply["generated_text"] == "one two"
    assert (reply["details"]["finish_reason"], reply["details"]["generated_tokens"]) == ("stop_sequence", 2)
    assert len(reply["details"]["top_tokens"]) == 2 and reply["details"]["prefill"][0]["logprob"] is None
    best_of = post(url, "/generate", {"inputs": "hi", "parameters": {"best_of": 2, "do_sample": True, "details": True}})
    sequences = best_of.json()["details"]["best_of_sequences"]
    assert len(sequences) == 1 and isinstance(sequences[0]["seed"], int)


def test_generate_errors_are_json(url: str) -> None:
    reply = post(url, "/generate", {"inputs": "hi", "parameters": {"temperature": 0}})
    assert reply.status == 422
    assert reply.json() == {
        "error": "Input validation error: `temperature` must be strictly positive",
        "error_type": "validation",
    }
    failed = post(url, "/generate", {"inputs": "<<error_after:1>> hi"})
    assert (failed.status, failed.json()["error_type"]) == (424, "generation")
    assert failed.json()["error"] == "Request failed during generation: simulated failure"
    busy = post(url, "/generate", {"inputs": "<<overloaded>> hi"})
    assert (busy.status, busy.json()) == (429, {"error": "Model is overloaded", "error_type": "overloaded"})


@pytest.mark.parametrize("path", ["/generate", "/generate_stream", "/"])
def test_extractor_rejections_over_http(url: str, path: str) -> None:
    no_type = post(url, path, b'{"inputs": "x"}', headers={"Content-Type": "text/plain"})
    assert no_type.status == 415 and no_type.body == b"Expected request with `Content-Type: application/json`"
    assert no_type.headers["content-type"].startswith("text/plain")
    truncated = post(url, path, b'{"inputs": "x"')
    assert (
        truncated.status == 400
        and truncated.body == (SYNTAX + "EOF while parsing an object at line 1 column 14").encode()
    )
    stop = post(url, path, {"inputs": "x", "parameters": {"stop": "x"}})
    assert stop.status == 422 and stop.body.startswith(DATA.encode() + b"parameters.stop: invalid type: string")
    seed = post(url, path, {"inputs": "x", "parameters": {"seed": -1}})
    assert seed.status == 422 and b"invalid value: integer `-1`, expected u64" in seed.body


def test_generate_stream_events(url: str) -> None:
    reply = post(url, "/generate_stream", {"inputs": "<<say:Hi there>>", "parameters": {"details": True}})
    assert reply.status == 200 and reply.headers["content-type"] == "text/event-stream"
    assert reply.headers["cache-control"] == "no-cache"
    assert b"[DONE]" not in reply.body and reply.body.startswith(b'data: {"index":1,')
    events = sse_events(reply.body)
    assert [e["index"] for e in events] == [1, 2, 3]
    assert [e["token"]["text"] for e in events] == ["Hi", " there", "</s>"]
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    assert events[-1]["token"]["special"] is True and events[-1]["generated_text"] == "Hi there"
    assert events[-1]["details"] == {
        "finish_reason": "eos_token",
        "generated_tokens": 3,
        "seed": None,
        "input_length": count_tokens("<<say:Hi there>>"),
    }
    quiet = sse_events(post(url, "/generate_stream", {"inputs": "<<say:Hi>>"}).body)
    assert quiet[-1]["details"] is None and quiet[-1]["generated_text"] == "Hi"


@pytest.mark.parametrize(
    ("body", "error", "error_type"),
    [
        ({"parameters": {"best_of": 2}}, "`best_of` != 1 is not supported when streaming tokens", "validation"),
        (
            {"parameters": {"decoder_input_details": True}},
            "`decoder_input_details` == true is not supported when streaming tokens",
            "validation",
        ),
        ({"parameters": {"top_p": 1.0}}, "`top_p` must be > 0.0 and < 1.0", "validation"),
        ({"inputs": "<<overloaded>>"}, "Model is overloaded", "overloaded"),
    ],
)
def test_stream_errors_arrive_in_a_200(url: str, body: dict[str, Any], error: str, error_type: str) -> None:
    reply = post(url, "/generate_stream", {"inputs": "hi", **body})
    assert reply.status == 200
    prefix = "Input validation error: " if error_type == "validation" else ""
    assert sse_events(reply.body) == [{"error": prefix + error, "error_type": error_type}]


def test_stream_generation_failure_after_tokens(url: str) -> None:
    events = sse_events(post(url, "/generate_stream", {"inputs": "<<error_after:2>><<say:a b c>>"}).body)
    assert [e.get("token", {}).get("text") for e in events[:2]] == ["a", " b"]
    assert events[2:] == [{"error": "Request failed during generation: simulated failure", "error_type": "generation"}]


def test_compat_route(url: str) -> None:
    wrapped = post(url, "/", {"inputs": "<<say:ok>>", "parameters": {"return_full_text": False}})
    assert wrapped.status == 200 and wrapped.json() == [{"generated_text": "ok"}]
    full = post(url, "/", {"inputs": "<<say:ok>>"})
    assert full.json() == [{"generated_text": "<<say:ok>>ok"}]
    streamed = post(url, "/", {"inputs": "<<say:ok>>", "stream": True, "parameters": {"return_full_text": False}})
    assert streamed.headers["content-type"] == "text/event-stream"
    assert sse_events(streamed.body)[-1]["generated_text"] == "ok"


def test_info_health_models_metrics_and_unknown_routes(url: str) -> None:
    info = get(url, "/info").json()
    assert list(info) == [
        "model_id",
        "model_sha",
        "model_pipeline_tag",
        "max_concurrent_requests",
        "max_best_of",
        "max_stop_sequences",
        "max_input_tokens",
        "max_total_tokens",
        "validation_workers",
        "max_client_batch_size",
        "router",
        "version",
        "sha",
        "docker_label",
    ]
    assert (info["model_id"], info["max_stop_sequences"], info["max_total_tokens"]) == ("simulated/tgi-model", 4, 4096)
    assert (info["router"], info["version"]) == ("text-generation-router", "3.3.6-dev0")
    health = get(url, "/health")
    assert (health.status, health.body) == (200, b"")
    assert get(url, "/v1/models").json()["data"][0]["id"] == "simulated/tgi-model"
    before = get(url, "/metrics").body.decode()
    post(url, "/generate", {"inputs": "hi", "parameters": {"top_k": 0}})
    after = get(url, "/metrics").body.decode()
    assert 'tgi_request_failure{err="validation"}' in after and before != after
    assert (get(url, "/nope").status, get(url, "/nope").body) == (404, b"")
    assert get(url, "/generate").status == 405


def test_data_prefix_without_space() -> None:
    with serve(SimSettings(data_prefix="data:")) as base:
        raw = post(base, "/generate_stream", {"inputs": "<<say:a b>>"}).body
    assert raw.startswith(b'data:{"index":1') and b"data: " not in raw
    assert [e["token"]["text"] for e in sse_events(raw, prefix=b"data:")] == ["a", " b", "</s>"]


def _http_chunks(base: str, path: str, body: Any) -> list[bytes]:
    """The HTTP/1.1 chunks of a chunked answer, read off the socket and parsed here (no client library in between)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    data = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    raw = b""
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=5) as sock:
        sock.sendall(head + data)
        while chunk := sock.recv(65536):
            raw += chunk
    rest = raw.split(b"\r\n\r\n", 1)[1]
    chunks = []
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(rest[:size])
        rest = rest[size + 2 :]


def test_byte_chunking_cuts_across_events() -> None:
    body = {"inputs": "<<say:one two three>>", "parameters": {"details": True}}
    with serve() as base:
        reference = post(base, "/generate_stream", body).body
    with serve(SimSettings(chunking="bytes:7")) as base:
        chunks = _http_chunks(base, "/generate_stream", body)
    assert b"".join(chunks) == reference
    assert all(len(c) == 7 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 7
    assert len(chunks) == -(-len(reference) // 7)


def test_keepalive_comments_during_slow_tokens() -> None:
    with serve(SimSettings(keepalive=0.01)) as base:
        raw = post(base, "/generate_stream", {"inputs": "<<delay:35>><<say:a>>"}).body
    assert raw.startswith(b":\n\n") and raw.count(b":\n\n") >= 4
    assert [e["token"]["text"] for e in sse_events(raw)] == ["a", "</s>"]


async def _overload_while_busy(base: str) -> tuple[int, Any, list[Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/generate_stream", json={"inputs": "<<delay:150>><<say:a b>>"}) as slow:
            await slow.content.readuntil(b"\n\n")  # the first token: the slot is held
            async with session.post(base + "/generate", json={"inputs": "hi"}) as busy:
                status, body = busy.status, await busy.json()
            async with session.post(base + "/generate_stream", json={"inputs": "hi"}) as busy_stream:
                events = sse_events(await busy_stream.read())
            await slow.read()
    return status, body, events


def test_overload_429_when_no_slot_is_free() -> None:
    with serve(SimSettings(max_concurrent_requests=1)) as base:
        status, body, events = asyncio.run(_overload_while_busy(base))
        assert (status, body) == (429, {"error": "Model is overloaded", "error_type": "overloaded"})
        assert events == [{"error": "Model is overloaded", "error_type": "overloaded"}]
        assert post(base, "/generate", {"inputs": "<<say:free again>>"}).json() == {"generated_text": "free again"}
    with serve(SimSettings(max_concurrent_requests=0)) as base:
        assert post(base, "/generate", {"inputs": "hi", "parameters": {"temperature": 0}}).status == 429  # 1 before 2
        assert post(base, "/generate", {"inputs": "hi", "parameters": {"best_of": 3}}).status == 422  # 0b before 1


async def _disconnect_then_generate(base: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        slow = await session.post(base + "/generate_stream", json={"inputs": "<<delay:20>><<tokens:50>>"})
        await slow.content.readuntil(b"\n\n")
        slow.close()  # the client goes away mid-stream
        await asyncio.sleep(0.1)
        async with session.post(base + "/generate", json={"inputs": "<<say:ok>>"}) as after:
            return after.status, await after.json()


def test_a_client_leaving_mid_stream_frees_its_slot() -> None:
    with serve(SimSettings(max_concurrent_requests=1)) as base:
        assert asyncio.run(_disconnect_then_generate(base)) == (200, {"generated_text": "ok"})
        assert "tgi_batch_current_size 0" in get(base, "/metrics").body.decode()


def test_tokenize_route(url: str) -> None:
    reply = post(url, "/tokenize", {"inputs": "Hi, you"})
    assert [(t["text"], t["start"], t["stop"]) for t in reply.json()] == [
        ("", 0, 0),
        ("Hi", 0, 2),
        (",", 2, 3),
        (" you", 3, 7),
    ]
    assert reply.json()[0]["id"] == 1


def test_command_line_settings() -> None:
    sim_settings, host, port = settings_from_args(
        ["--port", "0", "--data-prefix=data:", "--chunking", "bytes:3", "--api-key", "k", "--max-stop-sequences", "2"]
    )
    assert (host, port, sim_settings.data_prefix, sim_settings.chunk_size()) == ("127.0.0.1", 0, "data:", 3)
    assert (sim_settings.api_key, sim_settings.limits.max_stop_sequences) == ("k", 2)
    with pytest.raises(ValueError, match="chunking"):
        SimSettings(chunking="lines")


def test_api_key_and_payload_limit() -> None:
    with serve(SimSettings(api_key="s3cret", payload_limit=100)) as base:
        missing = post(base, "/generate", {"inputs": "<<say:x>>"})
        assert (missing.status, missing.body) == (401, b"")
        assert post(base, "/generate", {"inputs": "x"}, headers={"Authorization": "Bearer wrong"}).status == 401
        assert post(base, "/generate_stream", {"inputs": "x"}).status == 401
        good = post(base, "/generate", {"inputs": "<<say:x>>"}, headers={"Authorization": "BEARER S3CRET"})
        assert good.status == 200 and good.json() == {"generated_text": "x"}
        assert get(base, "/info").status == 200 and get(base, "/health").status == 200
        big = post(base, "/generate", {"inputs": "x" * 200}, headers={"Authorization": "Bearer s3cret"})
        assert (big.status, big.body) == (413, b"Failed to buffer the request body: length limit exceeded")


# -- the official text-generation client -----------------------------------------------------------------------
@client_warnings
def test_official_client_generate_and_stream(url: str) -> None:
    client = text_generation.Client(url)
    response = client.generate("<<say:Hello world>>", max_new_tokens=10, stop_sequences=["zzz"])
    assert response.generated_text == "Hello world"
    assert response.details.finish_reason == "eos_token" and response.details.generated_tokens == 3
    assert response.details.tokens[-1].special is True
    stopped = client.generate("<<say:Hello big world>>", stop_sequences=["big"])
    assert (stopped.generated_text, stopped.details.finish_reason) == ("Hello big", "stop_sequence")
    pieces = [r for r in client.generate_stream("<<say:a b c>>", max_new_tokens=10)]
    assert "".join(r.token.text for r in pieces if not r.token.special) == "a b c"
    assert pieces[-1].details is not None and pieces[-1].details.generated_tokens == 4
    with pytest.raises(
        tg_errors.ValidationError, match=r"^Input validation error: `top_n_tokens` must be >= 0 and <= 5"
    ):
        client.generate("hi", top_n_tokens=6)
    with pytest.raises(tg_errors.OverloadedError, match="Model is overloaded"):
        list(client.generate_stream("<<overloaded>>"))
    with pytest.raises(tg_errors.GenerationError, match="simulated failure"):
        list(client.generate_stream("<<error_after:1>>"))


@client_warnings
def test_official_clients_with_old_prefix_and_byte_chunks() -> None:
    with serve(SimSettings(data_prefix="data:", chunking="bytes:5")) as base:
        client = text_generation.Client(base)
        text = "".join(r.token.text for r in client.generate_stream("<<say:x, y; z>>") if not r.token.special)
        assert text == "x, y; z"

        async def use_async_client() -> tuple[str, list[str]]:
            aclient = text_generation.AsyncClient(base)
            result = await aclient.generate("<<say:async ok>>", max_new_tokens=5)
            tokens = [r.token.text async for r in aclient.generate_stream("<<say:p q>>")]
            return result.generated_text, tokens

        generated, tokens = asyncio.run(use_async_client())
        assert (generated, tokens) == ("async ok", ["p", " q", "</s>"])


@pytest.mark.parametrize(
    "prompt",
    [
        "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n",
        "<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHello there! [/INST]",
        "<|start_header_id|>user<|end_header_id|>\n\nHello there!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "\n### HUMAN:\nHello there!\n### RESPONSE:\n",
    ],
)
def test_default_answer_quotes_what_the_user_wrote_not_the_template(prompt: str) -> None:
    from mooltiproxy.tgisim.model import default_answer

    assert default_answer(prompt) == "Hello! I am a simulated model. You said: Hello there!"
