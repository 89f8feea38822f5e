"""Prompters: turn a chat message list into one prompt string (and the stop sequences that end the answer).

* ``from_template`` renders with the route's template: a role template, a Jinja chat template, or a built-in one.
* ``llama2_chat`` is the original Llama-2-chat format.
* ``build_template`` builds a template from a config entry at start-up; ``builtin_template`` looks up the library.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest
from ..plugin import MappingContext, Prompt, Template
from .jinja import JinjaTemplate
from .library import builtin_names, builtin_template
from .roles import DEFAULT_SYSTEM_PROMPT, RoleTemplate, llama2_chat
from .spec import TemplateSpecError, build_template

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "JinjaTemplate",
    "RoleTemplate",
    "TemplateSpecError",
    "build_template",
    "builtin_names",
    "builtin_template",
    "from_template",
    "llama2_chat",
    "with_default_system",
]


def from_template(messages: list[dict[str, Any]], ctx: MappingContext) -> Prompt:
    """Render ``messages`` with the route's template, offering it the request's ``tools``."""
    if ctx.template is None:
        raise BadRequest("this endpoint has no prompt template to turn messages into a prompt", param="messages")
    payload = ctx.payload
    tools = payload.get("tools") if type(payload) is dict or isinstance(payload, Mapping) else None
    return ctx.template.render(messages, tools=tools)


def with_default_system(template: Template, text: str) -> Template:
    """``template`` with a route's own ``default_system`` (resolved once, when the config is loaded)."""
    if isinstance(template, JinjaTemplate):
        return template.derive(default_system=text)
    if isinstance(template, RoleTemplate):
        twin = copy.copy(template)
        twin.default_system = text
        return twin
    return template
