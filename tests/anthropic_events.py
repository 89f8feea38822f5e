"""Reading and validating Anthropic Messages event streams in tests.

``check_events`` enforces the order the Anthropic SDK's accumulator relies on and folds the events into the
final message, so every stream test checks the protocol and the content at once.
"""

from __future__ import annotations

from typing import Any

import orjson

_DELTAS = {"text": "text_delta", "tool_use": "input_json_delta"}


def parse_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of each ``event: NAME\\ndata: JSON\\n\\n`` frame; anything else fails the test."""
    text = data.decode()
    assert text.endswith("\n\n") or not text, f"stream does not end with a blank line: {text[-40:]!r}"
    events: list[tuple[str, dict[str, Any]]] = []
    for frame in text.split("\n\n")[:-1]:
        lines = frame.split("\n")
        assert len(lines) == 2, f"frame is not one event line and one data line: {frame!r}"
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        name = lines[0][len("event: ") :]
        body = orjson.loads(lines[1][len("data: ") :])
        assert isinstance(body, dict)
        assert body.get("type") == name, f"event {name!r} carries data of type {body.get('type')!r}"
        events.append((name, body))
    return events


def check_events(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Validate a complete stream and return the message it builds (``error`` set when it ended on one).

    Rules: exactly one ``message_start`` first (empty content, integer usage); blocks started with indices
    0, 1, 2…, one open at a time, deltas of the open block's kind only, each closed by its own stop; then one
    ``message_delta`` (every block closed) and ``message_stop`` last. An ``error`` event may end the stream
    anywhere after ``message_start``; nothing follows it.
    """
    assert events, "empty stream"
    name, first = events[0]
    assert name == "message_start", f"the stream starts with {name!r}"
    message = dict(first["message"])
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"].startswith("msg_")
    assert message["content"] == [] and message["stop_reason"] is None
    usage = dict(message["usage"])
    assert isinstance(usage["input_tokens"], int) and isinstance(usage["output_tokens"], int)
    content: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    open_block: int | None = None
    delta_seen = stopped = False
    for position, (name, body) in enumerate(events[1:], 1):
        last = position == len(events) - 1
        if name == "error":
            assert last, "events after an error"
            assert body["error"]["type"] and body["error"]["message"]
            message["error"] = body["error"]
            break
        assert not stopped, f"{name!r} after message_stop"
        if name == "message_start":
            raise AssertionError("a second message_start")
        if name == "ping":
            continue
        if name == "content_block_start":
            assert not delta_seen, "a block after message_delta"
            assert open_block is None, f"block {body['index']} starts while {open_block} is open"
            assert body["index"] == len(content), f"block index {body['index']}, expected {len(content)}"
            block = dict(body["content_block"])
            assert block["type"] in _DELTAS, block
            if block["type"] == "text":
                assert block["text"] == ""
            else:
                assert block["id"].startswith("toolu_") and block["name"] and block["input"] == {}
                partial[body["index"]] = ""
            content.append(block)
            open_block = body["index"]
        elif name == "content_block_delta":
            assert body["index"] == open_block, f"delta for block {body['index']}, open: {open_block}"
            block = content[body["index"]]
            delta = body["delta"]
            assert delta["type"] == _DELTAS[block["type"]], f"{delta['type']} in a {block['type']} block"
            if block["type"] == "text":
                assert isinstance(delta["text"], str)
                block["text"] += delta["text"]
            else:
                assert isinstance(delta["partial_json"], str)
                partial[body["index"]] += delta["partial_json"]
        elif name == "content_block_stop":
            assert open_block is not None and body["index"] == open_block, (
                f"stop for {body['index']}, open: {open_block}"
            )
            if content[open_block]["type"] == "tool_use":
                raw = partial[open_block]
                content[open_block]["input"] = orjson.loads(raw) if raw else {}
            open_block = None
        elif name == "message_delta":
            assert not delta_seen, "a second message_delta"
            assert open_block is None, "message_delta with a block open"
            delta_seen = True
            assert body["delta"]["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal")
            message["stop_reason"] = body["delta"]["stop_reason"]
            message["stop_sequence"] = body["delta"]["stop_sequence"]
            assert isinstance(body["usage"]["output_tokens"], int)
            usage.update(body["usage"])
        elif name == "message_stop":
            assert delta_seen, "message_stop without message_delta"
            assert last, "events after message_stop"
            stopped = True
        else:
            raise AssertionError(f"unknown event {name!r}")
    else:
        assert stopped, "the stream ended without message_stop"
    message["content"] = content
    message["usage"] = usage
    return message


def check_stream(data: bytes) -> dict[str, Any]:
    return check_events(parse_events(data))
