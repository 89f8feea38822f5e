"""The original gateway's prompt formats: role-separator templates (``fromTemplate``) and Llama-2-chat.

Both keep the original output byte for byte. Additions: a configurable default system prompt (an explicit empty
string means none), ``developer`` messages read as ``system``, text content parts flattened, and a ``BadRequest``
naming the problem (unsupported role, tool calls, broken alternation) instead of a crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BadRequest
from ..plugin import MappingContext, Prompt
from .messages import check_messages, flatten_content

__all__ = ["DEFAULT_SYSTEM_PROMPT", "ROLE_KEYS", "RoleTemplate", "llama2_chat"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Please ensure that your responses are socially unbiased and positive in nature. If a question does not make any "
    "sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know "
    "the answer to a question, please don't share false information."
)

#: the keys of a role template, in the order they appear in a prompt
ROLE_KEYS = ("preprompt", "start", "system", "user", "assistant")

_ROLES = ("system", "user", "assistant")


def _plain(messages: Any, who: str) -> list[tuple[str, str]]:
    """``(role, text)`` pairs: ``developer`` read as ``system``, content flattened; refuse what cannot be shown."""
    plain: list[tuple[str, str]] = []
    for i, message in enumerate(check_messages(messages)):
        role = message["role"]
        if role == "developer":
            role = "system"
        if role not in _ROLES:
            raise BadRequest(
                f"messages[{i}]: role '{role}' is not supported by {who} (only system, user and assistant)",
                param="messages",
            )
        if message.get("tool_calls"):
            raise BadRequest(f"messages[{i}]: tool calls cannot be rendered by {who}", param="messages")
        plain.append((role, flatten_content(message.get("content"), i) or ""))
    return plain


class RoleTemplate:
    """The original template: ``preprompt + system text + start``, then ``<role separator> + content`` per message,
    then the ``assistant`` separator. Stops at the ``user`` separator unless ``stop`` is given."""

    def __init__(
        self,
        name: str,
        *,
        preprompt: str = "",
        start: str = "",
        system: str = "",
        user: str = "",
        assistant: str = "",
        default_system: str | None = None,
        stop: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.preprompt = preprompt
        self.start = start
        self.separators = {"system": system, "user": user, "assistant": assistant}
        self.default_system = default_system  # also sets the system text used
        if stop is None or isinstance(stop, str):
            stop = [user if stop is None else stop]
        # an empty stop string would end every generation at once
        self.stop: list[str] = [s for s in stop if s]

    @property
    def default_system(self) -> str | None:
        """The configured default system prompt (None: the built-in one, ``""``: none)."""
        return self._default_system

    @default_system.setter
    def default_system(self, value: str | None) -> None:
        self._default_system = value
        self._system = DEFAULT_SYSTEM_PROMPT if value is None else value

    def __getitem__(self, key: str) -> str:
        """The original configs were plain mappings: ``template["user"]`` keeps working."""
        if key == "preprompt":
            return self.preprompt
        if key == "start":
            return self.start
        return self.separators[key]

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Prompt:
        """Render ``messages``; ``tools`` and extra variables cannot be expressed by separators and are ignored."""
        plain = _plain(messages, f"template '{self.name}'")
        if plain[0][0] == "system":
            parts = [self.preprompt, plain[0][1], self.start]
            rest = plain[1:]
        else:
            parts = [self.preprompt, self._system, self.start]
            rest = plain
        for role, content in rest:
            parts.append(self.separators[role])
            parts.append(content)
        if add_generation_prompt is None or add_generation_prompt:
            parts.append(self.separators["assistant"])
        return Prompt("".join(parts), list(self.stop))


_B_INST, _E_INST = "[INST]", "[/INST]"
_B_SYS, _E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
_BOS, _EOS = "<s>", "</s>"


def _llama2_default_system(ctx: MappingContext) -> str:
    value: str | None = ctx.entry.get("default_system")  # the config schema makes it a string
    if value is None:
        value = getattr(ctx.template, "default_system", None)
    return DEFAULT_SYSTEM_PROMPT if value is None else value


def llama2_chat(messages: list[dict[str, Any]], ctx: MappingContext) -> Prompt:
    """Llama-2-chat: system text folded into the first user turn, ``<s>[INST] … [/INST] … </s>`` per exchange.

    The default system prompt comes from the route's ``default_system``, else its template's, else the built-in
    one; an empty string means no ``<<SYS>>`` block. Roles must alternate user/assistant and end with user.
    """
    plain = _plain(messages, "llama2_chat")
    if plain[0][0] == "system":
        system: str | None = plain[0][1]
        turns = plain[1:]
    else:
        system = _llama2_default_system(ctx) or None
        turns = plain
    if not turns:
        raise BadRequest("llama2_chat needs at least one user message", param="messages")
    offset = len(plain) - len(turns)
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role == "system":
            raise BadRequest(
                f"llama2_chat: messages[{i + offset}] is a system message; only the first message may be one",
                param="messages",
            )
        if role != expected:
            raise BadRequest(
                f"llama2_chat: conversation roles must alternate user/assistant/user/...; "
                f"messages[{i + offset}] is '{role}' where '{expected}' was expected",
                param="messages",
            )
    if turns[-1][0] != "user":
        raise BadRequest("llama2_chat: the conversation must end with a user message", param="messages")
    texts = [content for _, content in turns]
    if system is not None:
        texts[0] = _B_SYS + system + _E_SYS + texts[0]
    parts = [
        f"{_BOS}{_B_INST} {question.strip()} {_E_INST} {answer.strip()} {_EOS}"
        for question, answer in zip(texts[:-1:2], texts[1::2], strict=True)
    ]
    parts.append(f"{_BOS}{_B_INST} {texts[-1].strip()} {_E_INST}")
    return Prompt("".join(parts), [_B_INST])
