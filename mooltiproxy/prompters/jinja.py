"""Hugging Face chat templates (Jinja), rendered the way ``transformers.apply_chat_template(tokenize=False)`` does.

The environment matches transformers 5.x: an immutable sandbox with ``trim_blocks``/``lstrip_blocks``, the loop
controls extension and the ``{% generation %}`` tag, a ``tojson`` filter that is plain ``json.dumps``, and the
``raise_exception``/``strftime_now`` globals. Templates are compiled, and their fixed variables gathered, once, when
the object is built: ``derive`` makes a copy with other settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import BadRequest
from ..plugin import Prompt
from .messages import check_messages, check_tools, for_jinja

if TYPE_CHECKING:
    from jinja2.parser import Parser

__all__ = ["JinjaTemplate", "TemplateCompileError"]

#: template variables the renderer always sets itself
RESERVED_VARIABLES = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


class TemplateCompileError(ValueError):
    """A Jinja syntax error; ``variant`` names the template of a named set (``default``, ``tool_use``…)."""

    def __init__(self, message: str, lineno: int | None, variant: str | None = None) -> None:
        self.message = message
        self.lineno = lineno
        self.variant = variant
        where = f"template '{variant}': " if variant else ""
        line = f" on line {lineno}" if lineno else ""
        super().__init__(f"{where}Jinja syntax error{line}: {message}")


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``: transformers uses it to mark assistant spans; the text is unchanged."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        # a scope of its own, like the call block transformers wraps the body in
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: Any) -> NoReturn:
    raise jinja2.TemplateError(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # replaces Jinja's HTML-escaping tojson: chat templates expect the plain JSON text
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _check_reserved(kwargs: Mapping[str, Any] | None) -> None:
    reserved = RESERVED_VARIABLES.intersection(kwargs or {})
    if reserved:
        raise ValueError(f"template variables set by the renderer cannot be given: {', '.join(sorted(reserved))}")


def _compile(source: str, variant: str | None) -> jinja2.Template:
    try:
        template = _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateCompileError(exc.message or str(exc), exc.lineno, variant) from None
    # Jinja keeps a template's globals as a ChainMap over the environment's; the environment's globals are final
    # by now, so a plain dict holds the same
    template.globals = dict(template.globals)
    return template


def _render(template: jinja2.Template, context: dict[str, Any]) -> str:
    """``template.render(context)`` for a ``context`` that already starts with the template's globals: Jinja renders
    with it as it is, rather than merging the globals and the variables into a new dict (what
    ``template.new_context(context, shared=True)`` does, without its two calls)."""
    env = template.environment
    ctx = env.context_class(env, context, template.name, template.blocks, template.globals)
    try:
        return env.concat(template.root_render_func(ctx))
    except Exception:
        env.handle_exception()


class JinjaTemplate:
    """A compiled chat template (or a named set of them) with its special tokens, stops and extra variables.

    ``source`` is one template, or a mapping of named templates as in ``tokenizer_config.json``: ``tool_use`` is
    used when tools are passed and it exists, ``default`` otherwise. ``bos_token``/``eos_token`` left as None are
    undefined in the template, as with a tokenizer that has no such token. ``default_system``, when not empty, is
    sent as a system message to conversations that do not start with one.
    """

    def __init__(
        self,
        source: str | Mapping[str, str],
        *,
        name: str = "jinja",
        bos_token: str | None = None,
        eos_token: str | None = None,
        stop: Sequence[str] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True,
        default_system: str | None = None,
    ) -> None:
        if isinstance(source, str):
            self.sources: dict[str, str] = {"default": source}
            self._compiled = {"default": _compile(source, None)}
        else:
            if "default" not in source:
                raise ValueError(f"no 'default' template among {', '.join(repr(k) for k in source) or 'none'}")
            self.sources = dict(source)
            self._compiled = {key: _compile(text, key) for key, text in source.items()}
        _check_reserved(kwargs)
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        if isinstance(stop, str):
            stop = [stop]
        self.stop: list[str] = list(stop) if stop is not None else ([eos_token] if eos_token else [])
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.add_generation_prompt = add_generation_prompt
        self.default_system = default_system
        self._variables = self._base_variables()
        self._context = self._contexts()

    def _base_variables(self) -> dict[str, Any]:
        """The variables every rendering starts from: the special tokens that are set, then ``kwargs``."""
        variables: dict[str, Any] = {}
        if self.bos_token is not None:
            variables["bos_token"] = self.bos_token
        if self.eos_token is not None:
            variables["eos_token"] = self.eos_token
        variables.update(self.kwargs)
        return variables

    def _contexts(self) -> dict[str, dict[str, Any]]:
        """Per compiled template, what every rendering's context starts from: its globals, then the variables."""
        return {key: {**compiled.globals, **self._variables} for key, compiled in self._compiled.items()}

    def derive(
        self,
        *,
        name: str | None = None,
        stop: Sequence[str] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        default_system: str | None = None,
        add_generation_prompt: bool | None = None,
    ) -> JinjaTemplate:
        """A copy sharing the compiled templates, with the given settings replaced (``kwargs`` are merged)."""
        _check_reserved(kwargs)
        twin = object.__new__(JinjaTemplate)
        twin.__dict__.update(self.__dict__)
        twin.name = self.name if name is None else name
        twin.stop = list(self.stop) if stop is None else list(stop)
        twin.kwargs = {**self.kwargs, **(kwargs or {})}
        twin.default_system = self.default_system if default_system is None else default_system
        if add_generation_prompt is not None:
            twin.add_generation_prompt = add_generation_prompt
        twin._variables = twin._base_variables()
        twin._context = twin._contexts()
        return twin

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Prompt:
        """Render ``messages``; ``BadRequest`` when the template refuses them or fails on them."""
        chat = for_jinja(check_messages(messages))
        tool_list = check_tools(tools)
        if self.default_system and chat[0].get("role") not in ("system", "developer"):
            chat.insert(0, {"role": "system", "content": self.default_system})
        key = "tool_use" if tool_list is not None and "tool_use" in self._compiled else "default"
        compiled = self._compiled.get(key)
        if compiled is None:
            raise BadRequest(f"template '{self.name}' has no default template", param="messages")
        variables = {**self._context[key], **kwargs}
        variables["messages"] = chat
        variables["tools"] = tool_list
        variables["documents"] = list(documents) if documents is not None else None
        variables["add_generation_prompt"] = (
            self.add_generation_prompt if add_generation_prompt is None else add_generation_prompt
        )
        try:
            text = _render(compiled, variables)
        except jinja2.TemplateError as exc:
            # raise_exception() messages, undefined values, sandbox refusals: the template's own words
            detail = exc.message or type(exc).__name__
            if type(exc) is not jinja2.TemplateError:
                detail = f"{type(exc).__name__}: {detail}"
            raise BadRequest(f"template '{self.name}' refused the conversation: {detail}", param="messages") from exc
        except Exception as exc:  # TypeError, ValueError… raised by template code on unexpected data
            raise BadRequest(
                f"template '{self.name}' failed on the conversation: {type(exc).__name__}: {exc}", param="messages"
            ) from exc
        return Prompt(text, list(self.stop))
