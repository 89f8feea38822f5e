"""Checks and normalisation of an OpenAI-style message list before it is rendered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BadRequest

__all__ = ["CheckedMessages", "check_messages", "check_tools", "flatten_content", "for_jinja"]

# transformers 5.x copies these reasoning fields to each other, so a template reading any one of them sees the text
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


class CheckedMessages(list[dict[str, Any]]):
    """A message list ``check_messages`` accepted: checking it again returns it as it is."""

    __slots__ = ()


def check_messages(messages: Any) -> CheckedMessages:
    """Refuse anything but a non-empty list of objects that each have a string ``role`` and, as ``content``, a
    string, null or no value (an assistant message with tool calls) or a list of content parts (which are checked
    when the content is flattened). A list this returned is not checked again."""
    if type(messages) is CheckedMessages:
        return messages
    # the exact-type tests first: JSON lists and objects skip the slower abstract-class checks
    if type(messages) is not list and (not isinstance(messages, Sequence) or isinstance(messages, (str, bytes))):
        raise BadRequest("'messages' must be a list of message objects", param="messages")
    if not messages:
        raise BadRequest("'messages' must not be empty", param="messages")
    for i, message in enumerate(messages):
        if type(message) is not dict and not isinstance(message, Mapping):
            raise BadRequest(f"messages[{i}] must be an object", param="messages")
        if not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}].role must be a string", param="messages")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or a list of text parts", param="messages")
    return CheckedMessages(messages)


def check_tools(tools: Any) -> list[Mapping[str, Any]] | None:
    """``None`` or a list of tool objects, as sent by the client."""
    if tools is None:
        return None
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise BadRequest("'tools' must be a list of tool objects", param="tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise BadRequest(f"tools[{i}] must be an object", param="tools")
    return list(tools)


def flatten_content(content: Any, index: int) -> Any:
    """Join a list of OpenAI text content parts into one string; other values are returned unchanged."""
    if not isinstance(content, list):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise BadRequest(
                f"messages[{index}].content[{j}]: only text content parts are supported (got {kind!r})",
                param="messages",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def for_jinja(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copy ``messages`` the way transformers 5.x hands them to a template.

    None-valued keys are dropped (``content: null`` becomes undefined), content parts are flattened, and the
    reasoning fields are aliased. Every other key (``name``, ``tool_calls``, ``tool_call_id``…) is passed through.
    """
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        copy = {key: value for key, value in message.items() if value is not None}
        if isinstance(copy.get("content"), list):
            copy["content"] = flatten_content(copy["content"], i)
        for key in _REASONING_KEYS:  # the first one given is copied to the others
            if key in copy:
                reasoning = copy[key]
                for alias in _REASONING_KEYS:
                    copy.setdefault(alias, reasoning)
                break
        out.append(copy)
    return out
