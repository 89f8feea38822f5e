"""What the Anthropic front-end's request and answer sides share: the per-request state, tool ids, stops.

Tool-use ids: answers name a tool call ``toolu_`` + the upstream's id; requests strip ``toolu_`` again, so the
upstream sees its own ids back, and ids that came from elsewhere stay consistent within the conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import GatewayError
from ..plugin import MappingContext
from ._common import new_id

__all__ = [
    "STATE_KEY",
    "TOOL_ID_PREFIX",
    "AnthropicState",
    "anthropic_state",
    "matched_stop",
    "rename_param",
    "tool_id_in",
    "tool_id_out",
]

#: key of the ``AnthropicState`` in ``ctx.state``
STATE_KEY = "anthropic"
TOOL_ID_PREFIX = "toolu_"

# OpenAI parameter names (as the OpenAI ⇄ TGI layer reports them) → the Anthropic field they come from
_PARAMS = {
    "stop": "stop_sequences",
    "max_completion_tokens": "max_tokens",
    "max_tokens": "max_tokens",
    "user": "metadata.user_id",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "messages": "messages",
}


class AnthropicState:
    """What the answer side needs to know about an Anthropic request (kept in ``ctx.state[STATE_KEY]``)."""

    __slots__ = ("id", "model", "stops", "stream")

    def __init__(self, *, id: str, model: str, stops: Sequence[str] = (), stream: bool = False) -> None:
        self.id = id
        self.model = model
        #: the client's ``stop_sequences``: a match is reported as ``stop_sequence``, any other stop as ``end_turn``
        self.stops = tuple(stops)
        self.stream = stream


def anthropic_state(ctx: MappingContext) -> AnthropicState:
    """The state the request mapper left, or one read from the client's payload (another request mapper ran)."""
    state = ctx.state.get(STATE_KEY)
    if isinstance(state, AnthropicState):
        return state
    payload = ctx.payload if isinstance(ctx.payload, dict) else {}
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        configured = ctx.options.get("model")
        model = configured if isinstance(configured, str) and configured else "unknown"
    stops = payload.get("stop_sequences")
    state = AnthropicState(
        id=new_id("msg_"),
        model=model,
        stops=[s for s in stops if isinstance(s, str)] if isinstance(stops, list) else (),
        stream=payload.get("stream") is True,
    )
    ctx.state[STATE_KEY] = state
    return state


def rename_param(error: GatewayError) -> GatewayError:
    """An error of the OpenAI layer, renamed (in place) to name the Anthropic field, not the OpenAI parameter."""
    param = _PARAMS.get(error.param or "")
    if param is not None and param != error.param:
        error.message = error.message.replace(f"'{error.param}'", f"'{param}'")
        error.args = (error.message,)
        error.param = param
    return error


def matched_stop(text: str, stops: Sequence[str]) -> str | None:
    """The stop sequence that completes first in ``text`` (the longest on a tie), or None."""
    best: str | None = None
    start = end = -1
    for stop in stops:
        i = text.find(stop) if stop else -1
        if i != -1:
            j = i + len(stop)
            if end == -1 or j < end or (j == end and i < start):
                best, start, end = stop, i, j
    return best


def tool_id_out(upstream_id: Any) -> str:
    """The Anthropic id of an upstream tool call: ``toolu_`` + its id (characters Anthropic refuses dropped)."""
    if not isinstance(upstream_id, str) or not upstream_id:
        return new_id(TOOL_ID_PREFIX)
    if upstream_id.startswith(TOOL_ID_PREFIX):
        return upstream_id
    clean = "".join(c for c in upstream_id if c.isascii() and (c.isalnum() or c in "_-"))
    return TOOL_ID_PREFIX + clean if clean else new_id(TOOL_ID_PREFIX)


def tool_id_in(anthropic_id: str) -> str:
    """The upstream id of a ``tool_use`` / ``tool_result`` id (``tool_id_out`` undone)."""
    if anthropic_id.startswith(TOOL_ID_PREFIX) and len(anthropic_id) > len(TOOL_ID_PREFIX):
        return anthropic_id[len(TOOL_ID_PREFIX) :]
    return anthropic_id
