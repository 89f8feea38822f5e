"""OpenAI ``/completions`` and ``/chat/completions`` requests → TGI ``/generate`` (``/generate_stream``) requests.

Every request the OpenAI API accepts becomes requests TGI accepts, or a 400 naming the parameter that has no
faithful translation. The rules (TGI's limits come from the target options ``max_stop_sequences`` (4),
``max_top_n_tokens`` (5), ``max_best_of`` (2), which mirror TGI's launcher flags):

* types and OpenAI's ranges are checked (``temperature`` 0..2, ``top_p`` 0..1, penalties -2..2, ``n`` 1..128…);
* ``details: true`` always (finish reason, token counts and logprobs come from it);
* ``temperature`` 0 (below 0.0001) or ``top_p`` 0 → greedy (``do_sample: false``, no sampling parameter);
  otherwise ``do_sample: true``, ``temperature`` when ≠ 1, ``top_p`` when < 1 (as TGI's 32-bit float);
* ``stop`` (string or list, empty strings dropped; more than ``max_stop_sequences`` → 400): TGI gets the
  prompter's stops, then the client's, at most ``max_stop_sequences`` of them; the answer is cut on all of them;
* ``max_completion_tokens`` / ``max_tokens`` → ``max_new_tokens`` (legacy default 16; 0 → 400);
* ``seed`` ≥ 0 (negative → 400); ``frequency_penalty`` as is; ``presence_penalty`` p ≠ 0 →
  ``repetition_penalty = 2 ** (p / 2)`` (an approximation: TGI's penalty scales logits, OpenAI's subtracts);
* ``n`` > 1 → one TGI request per choice (seed, seed+1… when a seed is given); a list of prompts → one
  request per prompt and choice, choice index = prompt index × n + k; at most ``max_fanout`` (128) requests;
* legacy ``best_of`` > ``n`` → TGI ``best_of`` (no seed; ignored when greedy, where every candidate is the
  same); not with ``stream``; ``best_of`` < ``n`` → 400;
* ``logprobs`` (legacy 0..5) / ``top_logprobs`` (chat) → ``top_n_tokens`` (more than TGI allows: clamped,
  or 400 in strict mode); ``echo`` prepends the prompt to the answer (not with ``logprobs``);
* ``response_format``: ``json_schema`` → TGI JSON grammar (the schema needs top-level ``properties``, as TGI
  requires); ``json_object`` (or a ``json_schema`` without ``schema``) → a TGI regex grammar admitting any
  JSON object nested up to 3 levels;
* token-id prompts and a non-empty ``suffix`` → 400;
* extensions TGI understands, usable through ``extra_body``: ``top_k``, ``typical_p``, ``repetition_penalty``,
  ``truncate``;
* ``tools`` and ``tool_choice`` reach the template (tool-call text is parsed back by the answer mapper);
* other parameters (``logit_bias``, ``user``…) are ignored, or refused when the target is ``strict``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import BadRequest
from ..plugin import Fanout, MappingContext
from ..prompters.messages import check_messages
from ._common import STATE_KEY, RequestState, Slot
from ._openai_values import (
    JSON_OBJECT_REGEX,
    bad_type,
    f32,
    join_stops,
    option_int,
    read_flag,
    read_grammar,
    read_integer,
    read_number,
    read_stops,
    reject_unknown,
    wants_usage,
)

__all__ = ["JSON_OBJECT_REGEX", "chat_request", "text_request"]

_U32 = 2**32 - 1
_I32 = 2**31 - 1
_U64 = 2**64 - 1
#: below this temperature sampling is greedy anyway, and TGI could read it as 0 or overflow dividing by it
_GREEDY_TEMPERATURE = 1e-4

_COMMON = frozenset(
    {
        "model", "temperature", "top_p", "n", "stream", "stream_options", "stop", "max_tokens", "seed",
        "frequency_penalty", "presence_penalty", "logprobs", "top_k", "typical_p", "repetition_penalty", "truncate",
        "response_format",
    }
)  # fmt: skip
_CHAT_PARAMS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice"}
_TEXT_PARAMS = _COMMON | {"prompt", "best_of", "echo", "suffix"}
#: parameters most requests leave out: read only when the request has one of them
_PENALTIES = frozenset({"seed", "frequency_penalty", "presence_penalty", "repetition_penalty", "truncate"})


class _Parsed(NamedTuple):
    params: dict[str, Any]
    stream: bool
    include_usage: bool
    n: int
    best_of: int  # TGI best_of, or 1
    seed: int | None
    logprobs: int | None
    echo: bool
    stops: list[str]


def _parse(payload: dict[str, Any], ctx: MappingContext, chat: bool) -> _Parsed:
    """Validate and translate everything but the prompt."""
    strict = bool(ctx.options.get("strict"))
    if strict:
        reject_unknown(payload, _CHAT_PARAMS if chat else _TEXT_PARAMS)
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_type("model", "a string", model)
    stream = read_flag(payload, "stream")
    options = payload.get("stream_options")
    if stream and options is not None and not isinstance(options, dict):
        raise bad_type("stream_options", "an object", options)
    include_usage = stream and wants_usage(options)

    params: dict[str, Any] = {"details": True}
    n = read_integer(payload, "n", 1, 128) or 1
    temperature = read_number(payload, "temperature", 0, 2)
    top_p = read_number(payload, "top_p", 0, 1)
    top_p32 = f32(top_p) if top_p is not None else None
    top_k = typical_p = None
    if "top_k" in payload or "typical_p" in payload:  # TGI's own, seldom sent
        top_k = read_integer(payload, "top_k", 1, _I32)
        typical_p = read_number(payload, "typical_p", 0, 1)
        if typical_p is not None and f32(typical_p) <= 0:
            raise BadRequest("Invalid 'typical_p': expected a value above 0.", param="typical_p")
    greedy = (temperature is not None and temperature < _GREEDY_TEMPERATURE) or (top_p32 is not None and top_p32 <= 0)

    if chat:
        name = "max_completion_tokens"
        max_tokens = read_integer(payload, name, 0, _U32)
        if max_tokens is None:
            name = "max_tokens"
            max_tokens = read_integer(payload, name, 0, _U32)
    else:
        name = "max_tokens"
        max_tokens = read_integer(payload, name, 0, _U32)
        if max_tokens is None:
            max_tokens = 16  # OpenAI's default for /completions
    if max_tokens is not None:
        if max_tokens == 0:
            raise BadRequest(f"Invalid '{name}': the model server generates at least 1 token.", param=name)
        params["max_new_tokens"] = max_tokens

    seed = None
    if not _PENALTIES.isdisjoint(payload):
        seed = _read_penalties(payload, params)

    logprobs: int | None = None
    top_name = "top_logprobs" if chat else "logprobs"
    if "logprobs" in payload or "top_logprobs" in payload:
        if chat:
            top = read_integer(payload, top_name, 0, 20)
            logprobs = (top or 0) if read_flag(payload, "logprobs") else None
        else:
            logprobs = read_integer(payload, top_name, 0, 5)
    if logprobs:
        most = option_int(ctx, "max_top_n_tokens", 5)
        if logprobs > most:
            if strict:
                raise BadRequest(
                    f"Invalid '{top_name}': this model returns at most {most} alternatives.", param=top_name
                )
            logprobs = most
        if logprobs > 0:
            params["top_n_tokens"] = logprobs

    best_of = 1
    echo = False
    if not chat:
        wanted = read_integer(payload, "best_of", 0, 20)  # 0: not given
        if wanted and wanted < n:
            raise BadRequest("Invalid 'best_of': best_of must be greater than or equal to n.", param="best_of")
        if wanted is not None and wanted > 1:
            if stream:
                raise BadRequest("Invalid 'best_of': best_of cannot be used with stream.", param="best_of")
            if wanted > n and not greedy:  # greedy candidates would all be the same: one is enough
                most = option_int(ctx, "max_best_of", 2)
                if wanted > most:
                    raise BadRequest(f"Invalid 'best_of': this model allows at most {most}.", param="best_of")
                best_of = wanted
        echo = read_flag(payload, "echo")
        if echo and logprobs is not None:
            raise BadRequest(
                "'echo' with 'logprobs' is not supported: prompt logprobs are not available.", param="echo"
            )
        suffix = payload.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise bad_type("suffix", "a string", suffix)
        if suffix:
            raise BadRequest("'suffix' is not supported by this model.", param="suffix")

    if greedy:
        params["do_sample"] = False
    else:
        params["do_sample"] = True
        if temperature is not None and temperature != 1.0:
            params["temperature"] = temperature
        if top_p32 is not None and top_p32 < 1.0:
            params["top_p"] = top_p
        if top_k is not None:
            params["top_k"] = top_k
        if typical_p is not None and f32(typical_p) < 1.0:
            params["typical_p"] = typical_p
    if best_of > 1:
        params["best_of"] = best_of
        seed = None  # TGI refuses a seed with best_of
    response_format = payload.get("response_format")
    if response_format is not None:
        grammar = read_grammar(response_format)
        if grammar is not None:
            params["grammar"] = grammar
    stop = payload.get("stop")
    stops = [] if stop is None else read_stops(stop, option_int(ctx, "max_stop_sequences", 4))
    return _Parsed(params, stream, include_usage, n, best_of, seed, logprobs, echo, stops)


def _read_penalties(payload: dict[str, Any], params: dict[str, Any]) -> int | None:
    """Check ``seed``, the penalties and ``truncate``, add what TGI gets of them to ``params``; the seed."""
    seed = read_integer(payload, "seed", -(2**63), _U64)
    if seed is not None and seed < 0:
        raise BadRequest("Invalid 'seed': the model server only accepts seeds from 0 to 2**64-1.", param="seed")
    frequency_penalty = read_number(payload, "frequency_penalty", -2, 2)
    if frequency_penalty:
        params["frequency_penalty"] = frequency_penalty
    presence_penalty = read_number(payload, "presence_penalty", -2, 2)
    repetition_penalty = read_number(payload, "repetition_penalty", 0, 1e9)
    if repetition_penalty is not None:
        if f32(repetition_penalty) <= 0:
            raise BadRequest("Invalid 'repetition_penalty': expected a value above 0.", param="repetition_penalty")
        params["repetition_penalty"] = repetition_penalty
    elif presence_penalty:
        params["repetition_penalty"] = 2 ** (presence_penalty / 2)
    truncate = read_integer(payload, "truncate", 1, _U32)
    if truncate is not None:
        params["truncate"] = truncate
    return seed


def _stream_path(ctx: MappingContext) -> str:
    path = ctx.entry.get("stream_path")
    if isinstance(path, str) and path:
        return path
    path = ctx.upstream_path
    if path.endswith("/generate"):
        return path + "_stream"
    if path in ("", "/"):
        return "/generate_stream"
    return path


def _build(
    payload: dict[str, Any],
    ctx: MappingContext,
    chat: bool,
    parsed: _Parsed,
    prompts: list[str],
    stops: list[str],
    upstream_stops: list[str],
) -> dict[str, Any] | Fanout:
    """``stops``: every stop sequence the answer is cut on; ``upstream_stops``: the ones sent to TGI."""
    params = parsed.params
    if upstream_stops:
        params["stop"] = upstream_stops
    per_prompt = 1 if parsed.best_of > 1 else parsed.n
    total = per_prompt * len(prompts)
    most = option_int(ctx, "max_fanout", 128)
    if total > most:
        raise BadRequest(
            f"Invalid 'n': this request needs {total} generations, at most {most} are allowed.",
            param="n" if parsed.n > 1 else "prompt",
        )
    seed = parsed.seed
    requests: list[dict[str, Any]] = []
    slots: list[Slot] = []
    for p, prompt in enumerate(prompts):
        if per_prompt == 1:
            if seed is not None:
                params["seed"] = seed
            requests.append({"inputs": prompt, "parameters": params})
            slots.append(Slot(p, p * parsed.n, parsed.n))
            continue
        for k in range(per_prompt):
            one = params
            if seed is not None:
                one = dict(params)
                one["seed"] = (seed + k) & _U64
            requests.append({"inputs": prompt, "parameters": one})
            slots.append(Slot(p, p * per_prompt + k, 1))
    if parsed.stream:
        ctx.stream = True
        ctx.upstream_path = _stream_path(ctx)
    ctx.state[STATE_KEY] = RequestState.new(
        payload,
        ctx,
        chat=chat,
        stops=stops,
        slots=slots,
        prompts=prompts if parsed.echo else (),
        echo=parsed.echo,
        logprobs=parsed.logprobs,
        include_usage=parsed.include_usage,
    )
    return requests[0] if len(requests) == 1 else Fanout(requests)


def _prompts(value: Any) -> list[str]:
    if isinstance(value, str):
        if not value:
            raise BadRequest("Invalid 'prompt': the prompt must not be empty.", param="prompt")
        return [value]
    if value is None:
        raise BadRequest("Missing required parameter: 'prompt'.", param="prompt")
    if not isinstance(value, list) or not value:
        raise bad_type("prompt", "a string or a non-empty array of strings", value)
    for item in value:
        if isinstance(item, (int, list)) and not isinstance(item, bool):
            raise BadRequest("Invalid 'prompt': token-id prompts are not supported, send text.", param="prompt")
        if not isinstance(item, str):
            raise bad_type("prompt", "a string or a non-empty array of strings", item)
        if not item:
            raise BadRequest("Invalid 'prompt': the prompt must not be empty.", param="prompt")
    return value


async def text_request(payload: Any, ctx: MappingContext) -> dict[str, Any] | Fanout:
    """OpenAI ``/completions`` request → TGI request (a ``Fanout`` for several prompts or ``n`` > 1)."""
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.")
    parsed = _parse(payload, ctx, chat=False)
    prompts = _prompts(payload.get("prompt"))
    return _build(payload, ctx, False, parsed, prompts, parsed.stops, parsed.stops)


async def chat_request(payload: Any, ctx: MappingContext) -> dict[str, Any] | Fanout:
    """OpenAI ``/chat/completions`` request → TGI request; the route's prompter renders the messages."""
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.")
    parsed = _parse(payload, ctx, chat=True)
    # checked once: the built-in prompters do not check the messages again
    prompt = await ctx.render(check_messages(payload.get("messages")))
    if not prompt.text:
        raise BadRequest("Invalid 'messages': the rendered prompt is empty.", param="messages")
    # the template's end-of-turn stops first: TGI must not lose them to the client's
    stops, upstream = join_stops(prompt.stop, parsed.stops, option_int(ctx, "max_stop_sequences", 4))
    return _build(payload, ctx, True, parsed, [prompt.text], stops, upstream)
