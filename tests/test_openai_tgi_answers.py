from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from mooltiproxy.errors import GatewayError, UpstreamError, UpstreamStatus
from mooltiproxy.mappers.openai_tgi import chat_request, text_request
from mooltiproxy.mappers.openai_tgi_answers import chat_answer, text_answer
from mooltiproxy.plugin import MappingContext
from mooltiproxy.registry import MAPPERS, import_from_string


def prompter(messages: list[dict[str, Any]], ctx: MappingContext) -> tuple[str, list[str]]:
    return " ".join(str(m.get("content")) for m in messages), ["\nUser:"]


def mapped(body: dict[str, Any], *, chat: bool = True, options: Mapping[str, Any] | None = None) -> MappingContext:
    """A context after the request mapper ran on ``body``."""
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate", options=options, prompter=prompter)
    ctx.payload = body
    base: dict[str, Any] = {"model": "m"}
    base.update({"messages": [{"role": "user", "content": "Hi"}]} if chat else {"prompt": "Once"})
    base.update(body)
    asyncio.run((chat_request if chat else text_request)(base, ctx))
    return ctx


def token(text: str, logprob: float, special: bool = False, id: int = 1) -> dict[str, Any]:
    return {"id": id, "text": text, "logprob": logprob, "special": special}


def answer(text: str, reason: str | None, tokens: list[dict[str, Any]] | None = None, **details: Any) -> dict[str, Any]:
    if reason is None:
        return {"generated_text": text}
    toks = tokens if tokens is not None else [token(text, -0.5)]
    body = {"finish_reason": reason, "generated_tokens": len(toks), "seed": None, "prefill": [], "tokens": toks}
    body.update(details)
    return {"generated_text": text, "details": body}


PARIS = answer(
    " Paris.\nUser:",
    "stop_sequence",
    [token(" Paris", -0.1), token(".", -0.2), token("\n", -0.3), token("User", -0.4), token(":", -0.5)],
)
EOS = answer(" Paris.", "eos_token", [token(" Paris", -0.1), token(".", -0.2), token("</s>", -0.01, special=True)])


def test_builtin_names_resolve() -> None:
    for name in ("chatAnsTGItoOpenAI", "textAnsTGItoOpenAI"):
        mapper = import_from_string(MAPPERS[name])
        assert callable(mapper) and callable(mapper.stream) and callable(mapper.error)


def test_chat_answer() -> None:
    ctx = mapped({})
    ctx.reply_headers.append({"x-prompt-tokens": "7"})
    out = chat_answer(PARIS, ctx)
    state = ctx.state["openai_tgi"]
    assert out == {
        "id": state.id,
        "object": "chat.completion",
        "created": state.created,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " Paris.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }


def test_text_answer() -> None:
    ctx = mapped({"stop": "."}, chat=False)
    ctx.reply_headers.append({"X-Prompt-Tokens": "2"})  # a plain dict: the lookup ignores case
    out = text_answer(answer(" Paris.", "stop_sequence"), ctx)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert out["choices"] == [{"text": " Paris", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}


@pytest.mark.parametrize(
    ("reason", "expected"), [("eos_token", "stop"), ("length", "length"), ("stop_sequence", "stop")]
)
def test_finish_reasons(reason: str, expected: str) -> None:
    out = chat_answer(answer("Hello", reason), mapped({}))
    assert out["choices"][0]["finish_reason"] == expected
    assert out["choices"][0]["message"]["content"] == "Hello"


def test_stop_found_inside_the_text_is_cut() -> None:
    # TGI only stops when the text ends with a stop sequence; one inside a token is still cut
    out = chat_answer(answer(" Paris.\nUser: and", "length"), mapped({}))
    assert out["choices"][0]["message"]["content"] == " Paris."
    assert out["choices"][0]["finish_reason"] == "stop"


def test_missing_details() -> None:
    ctx = mapped({})
    ctx.reply_headers.append({"x-prompt-tokens": "4", "x-generated-tokens": "3"})
    out = chat_answer({"generated_text": "Hi"}, ctx)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    bare = chat_answer({"generated_text": "Hi"}, mapped({}))
    assert bare["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_prompt_tokens_from_prefill() -> None:
    prefill = [{"id": 1, "text": "a", "logprob": None}, {"id": 2, "text": "b", "logprob": -1.0}]
    out = chat_answer(answer("x", "length", prefill=prefill), mapped({}))
    assert out["usage"]["prompt_tokens"] == 2


def test_compat_route_list_answer() -> None:
    out = chat_answer([EOS], mapped({}))
    assert out["choices"][0]["message"]["content"] == " Paris."


def test_n_answers_and_usage() -> None:
    ctx = mapped({"n": 2})
    ctx.reply_headers.extend([{"x-prompt-tokens": "7"}, {"x-prompt-tokens": "7"}])
    out = chat_answer([PARIS, [EOS]], ctx)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in out["choices"]] == [" Paris.", " Paris."]
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}


def test_prompt_list_usage_counts_each_prompt_once() -> None:
    ctx = mapped({"prompt": ["A", "BB"], "n": 2}, chat=False)
    ctx.reply_headers.extend([{"x-prompt-tokens": "1"}] * 2 + [{"x-prompt-tokens": "2"}] * 2)
    answers = [answer(t, "length") for t in ("a0", "a1", "b0", "b1")]
    out = text_answer(answers, ctx)
    assert [(c["index"], c["text"]) for c in out["choices"]] == [(0, "a0"), (1, "a1"), (2, "b0"), (3, "b1")]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_echo() -> None:
    out = text_answer(answer(" upon", "length"), mapped({"echo": True}, chat=False))
    assert out["choices"][0]["text"] == "Once upon"


def test_best_of_picks_the_best_candidates() -> None:
    ctx = mapped({"best_of": 3, "n": 2}, chat=False, options={"max_best_of": 3})
    worse = {"generated_text": "bad", "finish_reason": "length", "generated_tokens": 1, "tokens": [token("bad", -9)]}
    better = {"generated_text": "ok", "finish_reason": "eos_token", "generated_tokens": 2, "tokens": [token("ok", -1)]}
    out = text_answer(answer("best", "length", best_of_sequences=[worse, better]), ctx)
    assert [(c["index"], c["text"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "best", "length"),
        (1, "ok", "stop"),
    ]
    assert out["usage"]["completion_tokens"] == 4  # every candidate was generated


def test_chat_logprobs() -> None:
    ctx = mapped({"logprobs": True, "top_logprobs": 1})
    tops = [[token(" Paris", -0.1)], [token(".", -0.2)], [token("\n", -0.3)], [token("User", -0.4)], [token(":", -0.5)]]
    paris = answer(PARIS["generated_text"], "stop_sequence", PARIS["details"]["tokens"], top_tokens=tops)
    out = chat_answer(paris, ctx)
    assert out["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": " Paris",
                "logprob": -0.1,
                "bytes": list(b" Paris"),
                "top_logprobs": [{"token": " Paris", "logprob": -0.1, "bytes": list(b" Paris")}],
            },
            {
                "token": ".",
                "logprob": -0.2,
                "bytes": [46],
                "top_logprobs": [{"token": ".", "logprob": -0.2, "bytes": [46]}],
            },
        ],
        "refusal": None,
    }


def test_chat_logprobs_skip_special_tokens_and_keep_utf8_bytes() -> None:
    eos = answer("é", "eos_token", [token("é", -0.1), token("</s>", -0.01, special=True)])
    out = chat_answer(eos, mapped({"logprobs": True}))
    assert out["choices"][0]["logprobs"]["content"] == [
        {"token": "é", "logprob": -0.1, "bytes": [0xC3, 0xA9], "top_logprobs": []}
    ]


def test_legacy_logprobs() -> None:
    ctx = mapped({"logprobs": 2, "stop": "!"}, chat=False)
    tokens = [token("Hi", -0.1), token(" there", -0.2), token("!", -0.3)]
    tops = [[token("Hi", -0.1), token("Hey", -2.0)], [token(" you", -0.9), token(" all", -1.0)], [token("!", -0.3)]]
    out = text_answer(answer("Hi there!", "stop_sequence", tokens, top_tokens=tops), ctx)
    choice = out["choices"][0]
    assert choice["text"] == "Hi there"
    assert choice["logprobs"] == {
        "tokens": ["Hi", " there"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"Hi": -0.1, "Hey": -2.0}, {" you": -0.9, " all": -1.0, " there": -0.2}],
        "text_offset": [0, 2],
    }


def test_without_request_state_the_payload_is_used() -> None:
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate", options={"model": "conf"})
    ctx.payload = {"stop": ["!"], "messages": []}
    out = chat_answer(answer("Hi!", "stop_sequence"), ctx)
    assert out["model"] == "conf" and out["choices"][0]["message"]["content"] == "Hi"
    assert out["id"].startswith("chatcmpl-")


def test_system_fingerprint_option() -> None:
    out = chat_answer(EOS, mapped({}, options={"system_fingerprint": "fp_1"}))
    assert out["system_fingerprint"] == "fp_1"
    assert "system_fingerprint" not in chat_answer(EOS, mapped({}))


def test_system_fingerprint_option_without_request_state() -> None:
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate", options={"system_fingerprint": "fp_2"})
    ctx.payload = {"stop": "!", "messages": []}
    assert chat_answer(answer("Hi!", "stop_sequence"), ctx)["system_fingerprint"] == "fp_2"
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate", options={"system_fingerprint": "fp_2"})
    ctx.payload = {"stream": True, "stream_options": {"include_usage": True}}
    t = text_answer.stream(ctx)
    chunks = t.feed(0, b'data: {"token":{"id":1,"text":"Hi","logprob":-1,"special":false}}\n\n')
    assert b'"system_fingerprint":"fp_2"' in chunks and b'"usage":null' in chunks


def test_template_stops_are_kept_when_the_client_sends_as_many_stops_as_allowed() -> None:
    # the client's four stops fill TGI's limit: the template's end of turn still ends the answer
    body = {"stop": ["###", "END", "Q:", "A:"]}
    ctx = mapped(body)
    made_up = answer("Hello!\nUser: tell me more", "length")
    assert chat_answer(made_up, ctx)["choices"][0]["message"]["content"] == "Hello!"
    ctx = mapped({**body, "stream": True})
    tokens = [
        {"token": {"id": i, "text": t, "logprob": -1, "special": False}} for i, t in enumerate(["Hello!", "\nUser:"])
    ]
    out = chat_answer.stream(ctx).feed(0, b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in tokens))
    texts = [orjson.loads(line[6:])["choices"][0]["delta"].get("content") for line in out.split(b"\n\n") if line]
    assert "".join(t for t in texts if t) == "Hello!"
    assert b'"finish_reason":"stop"' in out


def test_client_stops_beyond_the_upstream_limit_still_cut_the_answer() -> None:
    ctx = mapped({"stop": ["a", "b"]}, options={"max_stop_sequences": 2})
    assert chat_answer(answer("xyz b more", "length"), ctx)["choices"][0]["message"]["content"] == "xyz "


@pytest.mark.parametrize("payload", [{"error": "x"}, [1], "text", [{"generated_text": 3}]])
def test_not_a_tgi_answer(payload: Any) -> None:
    with pytest.raises(UpstreamError):
        chat_answer(payload, mapped({}))


def test_wrong_number_of_answers() -> None:
    with pytest.raises(UpstreamError):
        chat_answer([EOS], mapped({"n": 2}))


# -- errors


def translate(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, chat: bool = True, translated: bool = True
) -> GatewayError:
    ctx = mapped({}, chat=chat) if translated else MappingContext(target="tgi", path="/", upstream_path="/generate")
    if headers is not None:
        ctx.reply_headers.append(headers)
    error = (chat_answer if chat else text_answer).error(status, body, ctx)
    assert isinstance(error, UpstreamStatus)
    return error


def tgi(message: str, error_type: str) -> bytes:
    return orjson.dumps({"error": message, "error_type": error_type})


def test_validation_error() -> None:
    message = "Input validation error: `temperature` must be strictly positive"
    error = translate(422, tgi(message, "validation"))
    assert (error.status, error.type, error.param, error.message) == (
        400,
        "invalid_request_error",
        "temperature",
        message,
    )
    assert error.body()["error"]["message"] == message


@pytest.mark.parametrize(
    ("message", "chat", "param"),
    [
        ("Input validation error: `max_new_tokens` must be strictly positive", True, "max_completion_tokens"),
        ("Input validation error: `max_new_tokens` must be strictly positive", False, "max_tokens"),
        ("Input validation error: `top_n_tokens` must be >= 0 and <= 5. Given: 6", True, "top_logprobs"),
        ("Input validation error: `top_n_tokens` must be >= 0 and <= 5. Given: 6", False, "logprobs"),
        ("Input validation error: `seed` must not be set when `best_of` > 1", False, "seed"),
        (
            "Input validation error: grammar is not valid: Grammar must have a 'properties' field",
            True,
            "response_format",
        ),
        ("Input validation error: `inputs` cannot be empty", True, "messages"),
        ("Input validation error: tokenizer error boom", True, None),
    ],
)
def test_validation_error_params(message: str, chat: bool, param: str | None) -> None:
    assert translate(422, tgi(message, "validation"), chat=chat).param == param


@pytest.mark.parametrize("chat", [True, False])
def test_context_length(chat: bool) -> None:
    message = (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 200 `max_new_tokens`"
    )
    error = translate(422, tgi(message, "validation"), chat=chat)
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages" if chat else "prompt")
    too_long = translate(
        422, tgi("Input validation error: `inputs` must have less than 10 tokens. Given: 12", "validation")
    )
    assert too_long.code == "context_length_exceeded"


def test_overloaded() -> None:
    error = translate(429, tgi("Model is overloaded", "overloaded"), {"retry-after": "2"})
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert error.headers == {"Retry-After": "2"}
    assert translate(429, tgi("Model is overloaded", "overloaded"), {"x-other": "1"}).headers == {}
    assert translate(429, tgi("Model is overloaded", "overloaded")).headers == {}


def test_generation_failure() -> None:
    error = translate(424, tgi("Request failed during generation: CUDA OOM", "generation"))
    assert (error.status, error.type) == (500, "server_error")
    assert "CUDA OOM" in error.message


@pytest.mark.parametrize("kind", ["incomplete_generation", "incomplete_generation_stream"])
def test_incomplete_generation(kind: str) -> None:
    error = translate(500, tgi("Incomplete generation", kind))
    assert (error.status, error.type) == (502, "upstream_error")


def test_plain_text_422_names_the_parameter() -> None:
    body = (
        b"Failed to deserialize the JSON body into the target type: parameters.seed: invalid value: "
        b"integer `-1`, expected u64 at line 1 column 40"
    )
    error = translate(422, body)
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "seed")
    assert error.message == body.decode()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b"Failed to parse the request body as JSON: EOF while parsing"),
        (415, b"Expected request with `Content-Type: application/json`"),
    ],
)
def test_gateway_side_rejections_are_502(status: int, body: bytes) -> None:
    error = translate(status, body)
    assert error.status == 502 and body.decode() in error.message
    passed_through = translate(status, body, translated=False)  # the client's own body: its fault
    assert (passed_through.status, passed_through.message) == (status, body.decode())


def test_payload_too_large() -> None:
    error = translate(413, b"Failed to buffer the request body: length limit exceeded")
    assert (error.status, error.type, error.code) == (413, "invalid_request_error", "payload_too_large")


def test_unauthorized_empty_body() -> None:
    error = translate(401, b"")
    assert (error.status, error.code) == (401, "invalid_api_key")
    assert error.message == "the model server answered HTTP 401"


def test_other_statuses_are_kept() -> None:
    unhealthy = translate(503, tgi("unhealthy", "healthcheck"), {"Retry-After": "5"})
    assert (unhealthy.status, unhealthy.type, unhealthy.message) == (503, "server_error", "unhealthy")
    assert unhealthy.headers == {"Retry-After": "5"}
    missing = translate(404, b"not found")
    assert (missing.status, missing.type, missing.message) == (404, "invalid_request_error", "not found")


def test_openai_shaped_upstream_error_keeps_its_message() -> None:
    body = orjson.dumps({"error": {"message": "bad thing", "type": "x"}})
    assert translate(400, body).message.endswith("bad thing")


def test_not_an_error() -> None:
    ctx = MappingContext(target="tgi", path="/", upstream_path="/generate")
    assert chat_answer.error(200, b"{}", ctx) is None


def test_answers_parse_as_the_openai_sdk_types() -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    ChatCompletion.model_validate(chat_answer(PARIS, mapped({"logprobs": True, "top_logprobs": 2})), strict=True)
    Completion.model_validate(text_answer(PARIS, mapped({"logprobs": 2}, chat=False)), strict=True)
