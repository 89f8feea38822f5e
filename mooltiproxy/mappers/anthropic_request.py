"""Anthropic Messages requests (``POST /v1/messages``, ``/v1/messages/count_tokens``) → OpenAI chat requests.

The OpenAI chat request is the form every back-end of the Anthropic front-end starts from: an OpenAI-compatible
server gets it as it is, TGI through the OpenAI ⇄ TGI request mapper and the route's template.

* ``model`` (a string) and ``max_tokens`` (an integer ≥ 1) are required (``max_tokens`` not for count_tokens);
  ``messages`` is a non-empty list of ``user`` / ``assistant`` messages;
* ``system``: a string or a list of text blocks → a first ``system`` message;
* content: a string or a list of blocks. ``text`` → text; an assistant's ``tool_use`` → its ``tool_calls``
  (``input`` as JSON ``arguments``); a user's ``tool_result`` → a ``tool`` message with ``tool_call_id``, sent
  before the user's own text (a ``tool_result`` content is a string or text blocks; ``is_error`` prefixes
  ``Error:``). Any other block (images, documents, thinking…) is refused with a 400 naming it;
* ``tools`` (``name``, ``description``, ``input_schema``) → OpenAI function tools; ``tool_choice`` ``auto`` /
  ``any`` / ``tool`` / ``none`` → ``auto`` / ``required`` / the named function / ``none``
  (``disable_parallel_tool_use`` → ``parallel_tool_calls: false``);
* ``stop_sequences`` → ``stop``; ``temperature`` (0..1), ``top_p`` (0..1), ``top_k`` (0: none) as they are;
  ``metadata.user_id`` → ``user``; ``stream``;
* other fields are ignored, or refused when the target is ``strict``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest
from ..plugin import MappingContext
from ._anthropic_common import STATE_KEY, AnthropicState, tool_id_in
from ._common import new_id
from ._openai_values import kind_of, reject_unknown

__all__ = ["decode_request"]

_KNOWN = frozenset(
    {
        "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k",
        "metadata", "stream", "tools", "tool_choice",
    }
)  # fmt: skip
_COUNT_KNOWN = frozenset({"model", "messages", "system", "tools", "tool_choice"})
_I32 = 2**31 - 1

# -- reading values


def _bad(field: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(f"{field}: expected {expected}, got {kind_of(value)}", param=field)


def _name(block: dict[str, Any], key: str, where: str) -> str:
    """A required non-empty string of a block (an id, a name)."""
    value = block.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"{where}.{key}", "a non-empty string", value)
    return value


def _text_of(block: Any, field: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{field}.text", "a string", text)
    return text


def _block_type(block: Any, field: str) -> str:
    if not isinstance(block, dict):
        raise _bad(field, "a content block object", block)
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{field}.type", "a string", kind)
    return kind


def _unsupported(kind: str, field: str) -> BadRequest:
    return BadRequest(f"{field}: content blocks of type '{kind}' are not supported by this model", param=field)


def _number(payload: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, "a number", value)
    if not low <= value <= high:
        raise BadRequest(f"{name}: expected a value from {low} to {high}, got {value}", param=name)
    return value


def _integer(payload: dict[str, Any], name: str, low: int) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, "an integer", value)
    if not low <= value <= _I32:
        raise BadRequest(f"{name}: expected an integer from {low} to {_I32}, got {value}", param=name)
    return value


def _system(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if not isinstance(value, list):
        raise _bad("system", "a string or an array of text blocks", value)
    texts: list[str] = []
    for i, block in enumerate(value):
        field = f"system.{i}"
        kind = _block_type(block, field)
        if kind != "text":
            raise BadRequest(f"{field}: system blocks must be of type 'text', got '{kind}'", param=field)
        texts.append(_text_of(block, field))
    return "\n".join(texts) or None


def _tool_result_text(content: Any, field: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(field, "a string or an array of text blocks", content)
    texts: list[str] = []
    for j, block in enumerate(content):
        inner = f"{field}.{j}"
        kind = _block_type(block, inner)
        if kind != "text":
            raise _unsupported(kind, inner)
        texts.append(_text_of(block, inner))
    return "\n".join(texts)


def _text_content(texts: list[str]) -> str | list[dict[str, str]]:
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": t} for t in texts]


def _user(content: list[Any], field: str, out: list[dict[str, Any]]) -> None:
    texts: list[str] = []
    for j, block in enumerate(content):
        where = f"{field}.{j}"
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(_text_of(block, where))
        elif kind == "tool_result":
            tool_use_id = _name(block, "tool_use_id", where)
            text = _tool_result_text(block.get("content"), f"{where}.content")
            is_error = block.get("is_error")
            if is_error is not None and not isinstance(is_error, bool):
                raise _bad(f"{where}.is_error", "a boolean", is_error)
            if is_error:
                text = f"Error: {text}" if text else "Error"
            out.append({"role": "tool", "tool_call_id": tool_id_in(tool_use_id), "content": text})
        elif kind == "tool_use":
            raise BadRequest(f"{where}: 'tool_use' blocks belong in assistant messages", param=where)
        else:
            raise _unsupported(kind, where)
    if texts:
        out.append({"role": "user", "content": _text_content(texts)})


def _assistant(content: list[Any], field: str, out: list[dict[str, Any]]) -> None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{field}.{j}"
        kind = _block_type(block, where)
        if kind == "text":
            texts.append(_text_of(block, where))
        elif kind == "tool_use":
            tool_id = _name(block, "id", where)
            name = _name(block, "name", where)
            arguments = block.get("input")
            if not isinstance(arguments, dict):
                raise _bad(f"{where}.input", "an object", arguments)
            function = {"name": name, "arguments": orjson.dumps(arguments).decode()}
            calls.append({"id": tool_id_in(tool_id), "type": "function", "function": function})
        elif kind == "tool_result":
            raise BadRequest(f"{where}: 'tool_result' blocks belong in user messages", param=where)
        else:
            raise _unsupported(kind, where)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    out.append(message)


def _messages(value: Any, system: str | None) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad("messages", "an array of messages", value)
    if not value:
        raise BadRequest("messages: at least one message is required", param="messages")
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system is not None else []
    for i, message in enumerate(value):
        field = f"messages.{i}"
        if not isinstance(message, dict):
            raise _bad(field, "a message object", message)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f"{field}.role: expected 'user' or 'assistant', got {role!r}", param=f"{field}.role")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _bad(f"{field}.content", "a string or an array of content blocks", content)
        (_user if role == "user" else _assistant)(content, f"{field}.content", out)
    return out


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _bad("tools", "an array of tools", value)
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        field = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _bad(field, "a tool object", tool)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise BadRequest(f"{field}.type: tools of type {kind!r} are not supported", param=f"{field}.type")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{field}.name", "a non-empty string", name)
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"{field}.input_schema", "a JSON schema object", schema)
        function: dict[str, Any] = {"name": name, "parameters": schema}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise _bad(f"{field}.description", "a string", description)
            function["description"] = description
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any, out: dict[str, Any]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _bad("tool_choice", "an object", value)
    kind = value.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("tool_choice.name", "a non-empty string", name)
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise BadRequest(
            f"tool_choice.type: expected 'auto', 'any', 'tool' or 'none', got {kind!r}", param="tool_choice.type"
        )
    disable = value.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "a boolean", disable)
    if disable and kind != "none":
        out["parallel_tool_calls"] = False


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("stop_sequences", "an array of strings", value)
    stops: list[str] = []
    for i, stop in enumerate(value):
        if not isinstance(stop, str):
            raise _bad(f"stop_sequences.{i}", "a string", stop)
        if stop and stop not in stops:
            stops.append(stop)
    return stops


def decode_request(payload: Any, ctx: MappingContext, *, count_tokens: bool = False) -> dict[str, Any]:
    """Check an Anthropic request and return the OpenAI chat request it means; keep an ``AnthropicState``.

    ``count_tokens``: a ``/v1/messages/count_tokens`` request (no ``max_tokens``, no sampling).
    """
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    if ctx.options.get("strict"):
        reject_unknown(payload, _COUNT_KNOWN if count_tokens else _KNOWN)
    model = payload.get("model")
    if model is None:
        raise BadRequest("model: field required", param="model")
    if not isinstance(model, str):
        raise _bad("model", "a string", model)
    out: dict[str, Any] = {"model": model}
    stream = False
    stops: list[str] = []
    if not count_tokens:
        max_tokens = _integer(payload, "max_tokens", 1)
        if max_tokens is None:
            raise BadRequest("max_tokens: field required", param="max_tokens")
        out["max_tokens"] = max_tokens
    system = _system(payload.get("system"))
    out["messages"] = _messages(payload.get("messages"), system)
    tools = _tools(payload.get("tools"))
    if tools is not None:
        out["tools"] = tools
    _tool_choice(payload.get("tool_choice"), out)
    if not count_tokens:
        stream_value = payload.get("stream")
        if stream_value is not None and not isinstance(stream_value, bool):
            raise _bad("stream", "a boolean", stream_value)
        stream = stream_value is True
        if stream:
            out["stream"] = True
        stops = _stops(payload.get("stop_sequences"))
        if stops:
            out["stop"] = stops
        for name in ("temperature", "top_p"):
            value = _number(payload, name, 0, 1)
            if value is not None:
                out[name] = value
        top_k = _integer(payload, "top_k", 0)
        if top_k:  # 0: no top-k limit
            out["top_k"] = top_k
        metadata = payload.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise _bad("metadata", "an object", metadata)
            user = metadata.get("user_id")
            if user is not None and not isinstance(user, str):
                raise _bad("metadata.user_id", "a string", user)
            if user:
                out["user"] = user
    ctx.state[STATE_KEY] = AnthropicState(id=new_id("msg_"), model=model, stops=stops, stream=stream)
    return out
