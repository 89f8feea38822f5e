"""The scenarios: what is sent directly to the upstream and through the gateway, and what the answers contain.

The answers' contents (``ANSWER_TEXT``, ``STREAM_EVENTS`` tokens of ``STREAM_TOKEN``) are those of the fake
upstream, ``bench/upstream.py``. The Anthropic Messages scenarios send ``ANTHROPIC_REQUEST`` (the chat scenario's
prompt as an Anthropic body) to ``/v1/messages`` with the key in ``x-api-key``; their direct calls are those of the
chat, stream and OpenAI scenarios.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import orjson
from upstream import ANSWER_TEXT, STREAM_EVENTS, STREAM_TOKEN

__all__ = [
    "ANSWER_TEXT",
    "ANTHROPIC_OPENAI_TARGET",
    "ANTHROPIC_REQUEST",
    "ANTHROPIC_TEMPLATE",
    "ANTHROPIC_VERSION",
    "CHAT_REQUEST",
    "OPENAI_TARGET",
    "PACED_DELAY_MS",
    "SCENARIOS",
    "STREAM_EVENTS",
    "STREAM_TOKEN",
    "TARGETS_X",
    "TGI_REQUEST",
    "Scenario",
    "scenario_names",
]

#: the upstream's pause before each event in the paced stream runs (a 50-event stream then lasts about 250 ms)
PACED_DELAY_MS = 5.0
#: the gateway's target in front of the upstream's OpenAI route, picked by the OpenAI scenarios' ``target`` header
OPENAI_TARGET = "openai"
#: the gateway's target that serves Anthropic Messages from the upstream's OpenAI route (``target`` header)
ANTHROPIC_OPENAI_TARGET = "messages-openai"
#: the chat template the gateway renders Anthropic messages with for TGI
ANTHROPIC_TEMPLATE = "llama3"
#: the ``anthropic-version`` header the Anthropic SDKs send
ANTHROPIC_VERSION = "2023-06-01"
#: the most CPU per request the gateway may take, as a multiple of the nginx hop's in the same run (N connections)
TARGETS_X = {"passthrough": 10.0, "chat": 12.0}

SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer in plain English, cite no sources, and keep every answer short enough "
    "to read in under a minute."
)
USER_PROMPT = (
    "Summarise the trade-offs between running an LLM gateway in Python and writing it in C, in three bullet points "
    "please."
)
#: a realistic OpenAI chat request (about 500 bytes)
CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}],
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": 256,
    "stream": False,
    "user": "bench-user-0001",
    "metadata": {"team": "search", "trace_id": "0af7651916cd43dd8448eb211c80319c"},
}
#: what the gateway sends the upstream for it (a ChatML prompt): the direct call of every scenario
TGI_REQUEST: dict[str, Any] = {
    "inputs": f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{USER_PROMPT}<|im_end|>\n"
    "<|im_start|>assistant\n",
    "parameters": {
        "max_new_tokens": 256,
        "temperature": 0.7,
        "top_p": 0.95,
        "stop": ["<|im_end|>"],
        "details": True,
    },
}

#: the chat request's prompt as an Anthropic Messages request (355 bytes)
ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 256,
    "system": SYSTEM_PROMPT,
    "messages": [{"role": "user", "content": USER_PROMPT}],
}
ANTHROPIC_HEADERS = (("anthropic-version", ANTHROPIC_VERSION),)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    direct_path: str
    direct_body: bytes
    direct_expect: bytes
    gateway_path: str
    gateway_body: bytes
    gateway_expect: bytes
    stream: bool = False
    #: headers sent to the gateway only (the target that serves the scenario)
    gateway_headers: tuple[tuple[str, str], ...] = ()
    #: the gateway's key goes in ``x-api-key`` (as Anthropic clients send it) rather than ``Authorization``
    x_api_key: bool = False
    #: streams: the bytes that mark the first content event through the gateway (the time to the first chunk is
    #: the time until they arrive); empty: the first body chunk
    first_marker: bytes = b""


SCENARIOS = (
    Scenario(
        "passthrough",
        "POST /generate, JSON pass-through",
        "/generate",
        orjson.dumps(TGI_REQUEST),
        b'"generated_text":" Paris is the capital."',
        "/generate",
        orjson.dumps(TGI_REQUEST),
        b'"generated_text":" Paris is the capital."',
    ),
    Scenario(
        "chat",
        "POST /v1/chat/completions, translated to TGI /generate",
        "/generate",
        orjson.dumps(TGI_REQUEST),
        b'"generated_text":" Paris is the capital."',
        "/v1/chat/completions",
        orjson.dumps(CHAT_REQUEST),
        b"Paris is the capital.",
    ),
    Scenario(
        "stream",
        f"POST /v1/chat/completions stream=true, translated to TGI /generate_stream ({STREAM_EVENTS} events)",
        "/generate_stream",
        orjson.dumps(TGI_REQUEST),
        b'"input_length":12',
        "/v1/chat/completions",
        orjson.dumps({**CHAT_REQUEST, "stream": True}),
        b"data: [DONE]",
        stream=True,
    ),
    Scenario(
        "openai",
        "OpenAI pass-through chat: POST /v1/chat/completions to an OpenAI upstream",
        "/v1/chat/completions",
        orjson.dumps(CHAT_REQUEST),
        b"Paris is the capital.",
        "/v1/chat/completions",
        orjson.dumps(CHAT_REQUEST),
        b"Paris is the capital.",
        gateway_headers=(("target", OPENAI_TARGET),),
    ),
    Scenario(
        "openai_stream",
        f"OpenAI pass-through chat stream, {STREAM_EVENTS} events",
        "/v1/chat/completions",
        orjson.dumps({**CHAT_REQUEST, "stream": True}),
        b"data: [DONE]",
        "/v1/chat/completions",
        orjson.dumps({**CHAT_REQUEST, "stream": True}),
        b"data: [DONE]",
        stream=True,
        gateway_headers=(("target", OPENAI_TARGET),),
    ),
    Scenario(
        "anthropic",
        "Anthropic messages → TGI /generate and back",
        "/generate",
        orjson.dumps(TGI_REQUEST),
        b'"generated_text":" Paris is the capital."',
        "/v1/messages",
        orjson.dumps(ANTHROPIC_REQUEST),
        b'"text":" Paris is the capital."',
        gateway_headers=ANTHROPIC_HEADERS,
        x_api_key=True,
    ),
    Scenario(
        "anthropic_stream",
        f"Anthropic messages stream → /generate_stream, {STREAM_EVENTS} events",
        "/generate_stream",
        orjson.dumps(TGI_REQUEST),
        b'"input_length":12',
        "/v1/messages",
        orjson.dumps({**ANTHROPIC_REQUEST, "stream": True}),
        b"event: message_stop",
        stream=True,
        gateway_headers=ANTHROPIC_HEADERS,
        x_api_key=True,
        first_marker=b"event: content_block_delta",
    ),
    Scenario(
        "anthropic_openai",
        "Anthropic messages → OpenAI /chat/completions and back",
        "/v1/chat/completions",
        orjson.dumps(CHAT_REQUEST),
        b"Paris is the capital.",
        "/v1/messages",
        orjson.dumps(ANTHROPIC_REQUEST),
        b'"text":" Paris is the capital."',
        gateway_headers=(("target", ANTHROPIC_OPENAI_TARGET), *ANTHROPIC_HEADERS),
        x_api_key=True,
    ),
)


def scenario_names(text: str) -> list[str]:
    """``--scenarios`` as a list: ``"passthrough, chat"`` → ``["passthrough", "chat"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_load_options(parser: argparse.ArgumentParser, scenarios: list[str], quick_help: str) -> None:
    """The options every benchmark script takes: run length, connections, load generator, scenarios."""
    parser.add_argument("--duration", type=float, help="seconds per throughput run (default 5; 2 with --quick)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections for throughput")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "builtin"), default="auto", help="throughput load generator"
    )
    parser.add_argument(
        "--scenarios",
        type=scenario_names,
        default=scenarios,
        help="comma-separated subset of: "
        + ", ".join(s.name for s in SCENARIOS)
        + f" (default: {','.join(scenarios)})",
    )


def check_load_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in the default duration, and refuse out-of-range values or unknown scenarios."""
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.duration <= 0 or args.duration > 600 or not 1 <= args.connections <= 10_000:
        parser.error("--duration must be in (0, 600] and --connections in [1, 10000]")
    unknown = set(args.scenarios) - {s.name for s in SCENARIOS}
    if unknown or not args.scenarios:
        parser.error(f"unknown or no scenarios: {', '.join(sorted(unknown))}")
