"""Correctness: a sample of answers through the gateway, checked before any load is applied.

A failed check counts as an error of its scenario.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import orjson
from scenarios import ANSWER_TEXT, SCENARIOS, STREAM_EVENTS, STREAM_TOKEN, Scenario
from servers import Servers

#: one check's outcome: its name, whether it passed, what was found
Outcome = tuple[str, bool, str]


def sse_data(body: bytes) -> list[str]:
    """The ``data`` payloads of an event stream (one data line per event, as both sides send)."""
    return [line[5:].strip() for line in body.decode(errors="replace").splitlines() if line.startswith("data:")]


def sse_named(body: bytes) -> list[tuple[str, str]]:
    """The ``(event name, data)`` pairs of a named event stream (``event:`` then ``data:`` lines per event)."""
    events: list[tuple[str, str]] = []
    for block in body.decode(errors="replace").replace("\r\n", "\n").split("\n\n"):
        name, data = "", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if name or data:
            events.append((name, "\n".join(data)))
    return events


def anthropic_message(data: Any, stop_reason: str) -> list[Outcome]:
    """An Anthropic message with the upstream's text, ``stop_reason`` and token counts."""
    content = data.get("content") or [{}]
    text = content[0].get("text")
    usage = data.get("usage") or {}
    tokens = (usage.get("input_tokens"), usage.get("output_tokens"))
    return [
        ("type message", data.get("type") == "message" and data.get("role") == "assistant", repr(data)[:200]),
        ("id msg_…", str(data.get("id", "")).startswith("msg_"), repr(data.get("id"))),
        ("content text", content[0].get("type") == "text" and text == ANSWER_TEXT and len(content) == 1, repr(content)),
        (f"stop_reason {stop_reason}", data.get("stop_reason") == stop_reason, repr(data.get("stop_reason"))),
        ("usage 12 in, 6 out", tokens == (12, 6), repr(usage)),
    ]


def anthropic_stream(body: bytes) -> list[Outcome]:
    """An Anthropic event stream: message_start first, the tokens as text deltas, message_stop last."""
    events = sse_named(body)
    names = [name for name, _ in events]
    payloads = [orjson.loads(data) for _, data in events]
    typed = all(name == p.get("type") for name, p in zip(names, payloads, strict=True))
    deltas = [p["delta"] for p in payloads if p.get("type") == "content_block_delta"]
    text = "".join(d.get("text", "") for d in deltas if d.get("type") == "text_delta")
    ends = [p for p in payloads if p.get("type") == "message_delta"]
    end = ends[-1] if ends else {}
    usage = end.get("usage") or {}
    first = [n for n in names if n != "ping"][:3]
    start = (payloads[0].get("message") or {}) if payloads else {}
    return [
        ("event names match data types", bool(events) and typed, repr(names[:6])),
        ("message_start first", names[:1] == ["message_start"], repr(names[:3])),
        ("message_stop last", names[-1:] == ["message_stop"], repr(names[-3:])),
        ("message_start usage 12 in", (start.get("usage") or {}).get("input_tokens") == 12, repr(start)[:200]),
        ("text block opened", first[1:2] == ["content_block_start"], repr(first)),
        (f"{STREAM_EVENTS} text deltas", len(deltas) == STREAM_EVENTS, f"{len(deltas)} deltas"),
        ("tokens relayed", text == STREAM_TOKEN * STREAM_EVENTS, repr(text[:80])),
        (
            "message_delta stop_reason max_tokens",
            len(ends) == 1 and end.get("delta", {}).get("stop_reason") == "max_tokens",
            repr(ends)[:200],
        ),
        (f"usage {STREAM_EVENTS} output tokens", usage.get("output_tokens") == STREAM_EVENTS, repr(usage)),
    ]


@dataclass
class Checks:
    results: list[dict[str, Any]] = field(default_factory=list)

    def add(self, scenario: str, name: str, ok: bool, detail: str = "") -> None:
        self.results.append({"scenario": scenario, "check": name, "ok": bool(ok), "detail": detail[:400]})

    def failures(self, scenario: str) -> int:
        return sum(1 for r in self.results if r["scenario"] == scenario and not r["ok"])


async def verify(servers: Servers, scenarios: Iterable[str]) -> Checks:
    """Check a sample of answers through the gateway (and that streams are relayed as they come)."""
    checks = Checks()
    gw, up = servers.gateway_url, servers.upstream_url
    auth = servers.headers(True)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
            async with session.post(url, data=body, headers=headers) as resp:
                return resp.status, await resp.read(), dict(resp.headers)

        async def attempt(scenario: str, name: str, step: Any) -> None:
            try:
                await step()
            except Exception as exc:  # a failed check, whatever went wrong
                checks.add(scenario, name, False, f"{type(exc).__name__}: {exc}")

        async def passthrough() -> None:
            _, direct, _ = await post(up + "/generate", SCENARIOS[0].direct_body, servers.headers(False))
            status, body, headers = await post(gw + "/generate", SCENARIOS[0].gateway_body, auth)
            checks.add("passthrough", "status 200", status == 200, f"status {status}: {body[:200]!r}")
            checks.add("passthrough", "body relayed unchanged", body == direct, repr(body[:200]))
            prompt_tokens = headers.get("x-prompt-tokens") or headers.get("X-Prompt-Tokens")
            checks.add("passthrough", "x-prompt-tokens relayed", prompt_tokens == "12", repr(prompt_tokens))

        async def chat() -> None:
            status, body, _ = await post(gw + "/v1/chat/completions", SCENARIOS[1].gateway_body, auth)
            checks.add("chat", "status 200", status == 200, f"status {status}: {body[:300]!r}")
            data = orjson.loads(body)
            choice = data["choices"][0]
            content = choice["message"]["content"]
            checks.add("chat", "content", content == ANSWER_TEXT, repr(content))
            checks.add(
                "chat", "object chat.completion", data.get("object") == "chat.completion", repr(data.get("object"))
            )
            checks.add(
                "chat", "finish_reason stop", choice.get("finish_reason") == "stop", repr(choice.get("finish_reason"))
            )

        async def stream() -> None:
            status, body, headers = await post(gw + "/v1/chat/completions", SCENARIOS[2].gateway_body, auth)
            checks.add("stream", "status 200", status == 200, f"status {status}: {body[:300]!r}")
            content_type = headers.get("Content-Type", "")
            checks.add("stream", "text/event-stream", content_type.startswith("text/event-stream"), content_type)
            events = sse_data(body)
            checks.add("stream", "ends with [DONE]", bool(events) and events[-1] == "[DONE]", repr(events[-1:]))
            chunks = [orjson.loads(e) for e in events if e != "[DONE]"]
            deltas = [c["choices"][0].get("delta", {}).get("content") for c in chunks if c.get("choices")]
            text = "".join(d for d in deltas if d)
            checks.add(
                "stream", f"{STREAM_EVENTS} tokens relayed", text == STREAM_TOKEN * STREAM_EVENTS, repr(text[:80])
            )
            kinds = {c.get("object") for c in chunks}
            checks.add("stream", "chat.completion.chunk objects", kinds == {"chat.completion.chunk"}, repr(kinds))
            reasons = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
            checks.add("stream", "finish_reason length", "length" in reasons, repr([r for r in reasons if r]))

        async def paced(scenario: Scenario) -> None:
            # the upstream waits 10 ms before each event: the first one must arrive long before the last
            started = time.perf_counter()
            headers = {**servers.headers(True, scenario.x_api_key), **dict(scenario.gateway_headers)}
            url = gw + scenario.gateway_path + "?delay_ms=10"
            async with session.post(url, data=scenario.gateway_body, headers=headers) as resp:
                await resp.content.readany()
                first = time.perf_counter() - started
                await resp.read()
                total = time.perf_counter() - started
            ok = first < 0.25 * total and total >= 0.4
            detail = f"first chunk after {first * 1000:.0f} ms, last after {total * 1000:.0f} ms"
            checks.add(scenario.name, "relayed as it comes (paced upstream)", ok, detail)

        async def openai(scenario: Scenario) -> None:
            # a pass-through: the client gets the upstream's answer byte for byte
            name = scenario.name
            _, direct, _ = await post(up + scenario.direct_path, scenario.direct_body, servers.headers(False))
            headers = {**auth, **dict(scenario.gateway_headers)}
            status, body, answer_headers = await post(gw + scenario.gateway_path, scenario.gateway_body, headers)
            checks.add(name, "status 200", status == 200, f"status {status}: {body[:300]!r}")
            checks.add(name, "body relayed unchanged", body == direct, repr(body[:200]))
            if not scenario.stream:
                content = orjson.loads(body)["choices"][0]["message"]["content"]
                checks.add(name, "content", content == ANSWER_TEXT, repr(content))
                return
            content_type = answer_headers.get("Content-Type", "")
            checks.add(name, "text/event-stream", content_type.startswith("text/event-stream"), content_type)
            events = sse_data(body)
            checks.add(name, "ends with [DONE]", bool(events) and events[-1] == "[DONE]", repr(events[-1:]))
            chunks = [orjson.loads(e) for e in events if e != "[DONE]"]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            checks.add(name, f"{STREAM_EVENTS} events", len(chunks) == STREAM_EVENTS, f"{len(chunks)} events")
            checks.add(name, "tokens relayed", text == STREAM_TOKEN * STREAM_EVENTS, repr(text[:80]))

        async def anthropic(scenario: Scenario) -> None:
            # an Anthropic client: the key in x-api-key, anthropic-version, POST /v1/messages
            name = scenario.name
            headers = {**servers.headers(True, scenario.x_api_key), **dict(scenario.gateway_headers)}
            status, body, answer_headers = await post(gw + scenario.gateway_path, scenario.gateway_body, headers)
            checks.add(name, "status 200 (key in x-api-key)", status == 200, f"status {status}: {body[:300]!r}")
            content_type = answer_headers.get("Content-Type", "")
            if scenario.stream:
                checks.add(name, "text/event-stream", content_type.startswith("text/event-stream"), content_type)
                outcomes = anthropic_stream(body)
            else:
                checks.add(name, "application/json", content_type.startswith("application/json"), content_type)
                outcomes = anthropic_message(orjson.loads(body), "end_turn")
            for check, ok, detail in outcomes:
                checks.add(name, check, ok, detail)

        wanted = set(scenarios)
        if "passthrough" in wanted:
            await attempt("passthrough", "answer", passthrough)
        if "chat" in wanted:
            await attempt("chat", "answer", chat)
        if "stream" in wanted:
            await attempt("stream", "answer", stream)
            await attempt("stream", "paced relay", partial(paced, SCENARIOS[2]))
        for scenario in SCENARIOS:
            if scenario.name in wanted and scenario.name.startswith("openai"):
                await attempt(scenario.name, "answer", partial(openai, scenario))
                if scenario.stream:
                    await attempt(scenario.name, "paced relay", partial(paced, scenario))
        for scenario in SCENARIOS:
            if scenario.name in wanted and scenario.gateway_path == "/v1/messages":
                await attempt(scenario.name, "answer", partial(anthropic, scenario))
                if scenario.stream:
                    await attempt(scenario.name, "paced relay", partial(paced, scenario))
    return checks
