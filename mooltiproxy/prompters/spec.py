"""Building a template from one entry of the config's ``templates:`` section, reporting every problem at once.

An entry is one of:

* a role template (the original form): ``preprompt, start, system, user, assistant`` (strings, "" when missing),
  optional ``default_system`` and ``stop`` (a string or a list; replaces the default stop, the ``user`` separator);
* a Jinja chat template from exactly one of ``jinja`` (inline source), ``file`` (a template file) or
  ``tokenizer_config`` (a Hugging Face ``tokenizer_config.json``, or the folder holding it), with optional
  ``bos_token``, ``eos_token``, ``stop``, ``kwargs`` (extra template variables), ``add_generation_prompt`` and
  ``default_system``;
* ``builtin: <name>`` from the library, with optional ``stop``, ``default_system`` and ``kwargs``.

Every template is compiled and tried on a sample conversation here, so a broken one stops the start-up.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BadRequest
from ..plugin import Template
from .jinja import RESERVED_VARIABLES, JinjaTemplate, TemplateCompileError
from .library import builtin_names, builtin_template
from .roles import ROLE_KEYS, RoleTemplate

__all__ = ["TemplateSpecError", "build_template"]

SOURCE_KEYS = ("jinja", "file", "tokenizer_config", "builtin")
_JINJA_OPTIONS = ("bos_token", "eos_token", "stop", "kwargs", "add_generation_prompt", "default_system")
_BUILTIN_OPTIONS = ("stop", "default_system", "kwargs")
_ROLE_OPTIONS = (*ROLE_KEYS, "default_system", "stop")

_SAMPLES: tuple[list[dict[str, Any]], ...] = (
    [
        {"role": "user", "content": "Hello, who are you?"},
        {"role": "assistant", "content": "I am a helpful assistant."},
        {"role": "user", "content": "What can you do?"},
    ],
    # for templates that insist on a system message
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, who are you?"},
    ],
)
_SAMPLE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

Problems = list[tuple[str, str]]


class TemplateSpecError(ValueError):
    """Every problem of one template entry, each as ``(sub-key path, message)``; the path is "" for the entry."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, message in self.problems))


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string(spec: Mapping[str, Any], key: str, problems: Problems, *, null_ok: bool = False) -> str | None:
    value = spec.get(key)
    if value is None and (null_ok or key not in spec):
        return None
    if not isinstance(value, str):
        problems.append((key, f"must be a string, not {_type_name(value)}"))
        return None
    return value


def _stops(spec: Mapping[str, Any], problems: Problems) -> list[str] | None:
    if "stop" not in spec:
        return None
    value = spec["stop"]
    if isinstance(value, str):
        items, paths = [value], ["stop"]
    elif isinstance(value, list):
        items, paths = value, [f"stop[{i}]" for i in range(len(value))]
    else:
        problems.append(("stop", f"must be a string or a list of strings, not {_type_name(value)}"))
        return None
    ok = True
    for path, item in zip(paths, items, strict=True):
        if not isinstance(item, str) or not item:
            problems.append((path, f"must be a non-empty string, got {item!r}"))
            ok = False
    return list(items) if ok else None


def _kwargs(spec: Mapping[str, Any], problems: Problems) -> dict[str, Any] | None:
    if "kwargs" not in spec:
        return None
    value = spec["kwargs"]
    if not isinstance(value, Mapping):
        problems.append(("kwargs", f"must be a mapping of template variables, not {_type_name(value)}"))
        return None
    ok = True
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            problems.append((f"kwargs.{key}", "is not a valid template variable name"))
            ok = False
        elif key in RESERVED_VARIABLES:
            problems.append((f"kwargs.{key}", "is set by the renderer and cannot be given"))
            ok = False
    return dict(value) if ok else None


def _read_text(path: Path, key: str, problems: Problems) -> str | None:
    try:
        # utf-8-sig: a byte-order mark left by an editor must not end up in every prompt
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        problems.append((key, f"'{path}' is not UTF-8 text"))
    except OSError as exc:
        problems.append((key, f"cannot read '{path}': {exc.strerror or exc}"))
    return None


def _token(value: Any, key: str, problems: Problems, where: str) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, ``{"content": ...}`` or null."""
    if isinstance(value, Mapping):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value
    problems.append(("tokenizer_config", f"{where}: {key} must be a string or {{'content': string}}"))
    return None


def _tokenizer_config(path: Path, problems: Problems) -> tuple[str | dict[str, str] | None, str | None, str | None]:
    """``(chat template or named templates, bos_token, eos_token)`` read from a tokenizer_config.json."""
    if path.is_dir():
        path = path / "tokenizer_config.json"
    text = _read_text(path, "tokenizer_config", problems)
    if text is None:
        return None, None, None
    try:
        data = json.loads(text)
    except ValueError as exc:
        problems.append(("tokenizer_config", f"'{path}' is not valid JSON: {exc}"))
        return None, None, None
    if not isinstance(data, dict):
        problems.append(("tokenizer_config", f"'{path}' must hold a JSON object"))
        return None, None, None
    where = f"'{path}'"
    bos = _token(data.get("bos_token"), "bos_token", problems, where)
    eos = _token(data.get("eos_token"), "eos_token", problems, where)
    raw = data.get("chat_template")
    if raw is None:
        # recent tokenizers keep the template in a file of its own next to the config
        sibling = path.parent / "chat_template.jinja"
        if sibling.is_file():
            return _read_text(sibling, "tokenizer_config", problems), bos, eos
        problems.append(("tokenizer_config", f"{where} has no chat_template"))
        return None, bos, eos
    if isinstance(raw, str):
        return raw, bos, eos
    named: dict[str, str] = {}
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            entry = item if isinstance(item, Mapping) else {}
            if not isinstance(entry.get("name"), str) or not isinstance(entry.get("template"), str):
                problems.append(("tokenizer_config", f"{where}: chat_template[{i}] must be {{name, template}} strings"))
                return None, bos, eos
            named[entry["name"]] = entry["template"]
        return named, bos, eos
    problems.append(("tokenizer_config", f"{where}: chat_template must be a string or a list, not {_type_name(raw)}"))
    return None, bos, eos


def _try(template: Template, key: str, problems: Problems, *, tools: bool = False) -> None:
    """Render the sample conversations; a template that renders none of them is reported with its first error."""
    first: BadRequest | None = None
    for sample in _SAMPLES:
        try:
            text = template.render(sample, tools=_SAMPLE_TOOLS if tools else None).text
        except BadRequest as exc:
            first = first or exc
            continue
        if text:
            return
        problems.append((key, "renders an empty prompt for a sample conversation"))
        return
    assert first is not None
    with_tools = " with tools" if tools else ""
    problems.append((key, f"fails on a sample conversation{with_tools}: {first.message}"))


def _role_template(name: str, spec: Mapping[str, Any], problems: Problems) -> RoleTemplate | None:
    separators = {key: _string(spec, key, problems, null_ok=True) or "" for key in ROLE_KEYS}
    default_system = _string(spec, "default_system", problems)
    stop = _stops(spec, problems)
    if problems:
        return None
    return RoleTemplate(name, **separators, default_system=default_system, stop=stop)


def _jinja_template(
    name: str, kind: str, spec: Mapping[str, Any], base_dir: Path, problems: Problems
) -> JinjaTemplate | None:
    stop = _stops(spec, problems)
    kwargs = _kwargs(spec, problems)
    default_system = _string(spec, "default_system", problems)
    add_generation_prompt = spec.get("add_generation_prompt", True)
    if not isinstance(add_generation_prompt, bool):
        problems.append(("add_generation_prompt", f"must be true or false, not {_type_name(add_generation_prompt)}"))
        add_generation_prompt = True
    bos = _string(spec, "bos_token", problems, null_ok=True)
    eos = _string(spec, "eos_token", problems, null_ok=True)

    value = spec[kind]
    if kind == "builtin":
        if not isinstance(value, str):
            problems.append((kind, f"must be a template name, not {_type_name(value)}"))
            return None
        base = builtin_template(value)
        if base is None:
            close = difflib.get_close_matches(value.lower(), builtin_names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append((kind, f"unknown built-in template '{value}'{hint}; known: {', '.join(builtin_names())}"))
            return None
        return base.derive(name=name, stop=stop, kwargs=kwargs, default_system=default_system)

    if not isinstance(value, str) or not value:
        what = "the template source" if kind == "jinja" else "a file path"
        problems.append((kind, f"must be {what}, not {_type_name(value) if value != '' else 'empty'}"))
        return None
    source: str | dict[str, str] | None = value
    where = ""
    if kind in ("file", "tokenizer_config"):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base_dir / path
        where = f"'{path}': "
        if kind == "file":
            source = _read_text(path, kind, problems)
        else:
            source, file_bos, file_eos = _tokenizer_config(path, problems)
            bos = bos if "bos_token" in spec else file_bos
            eos = eos if "eos_token" in spec else file_eos
    if source is None:
        return None
    try:
        return JinjaTemplate(
            source,
            name=name,
            bos_token=bos,
            eos_token=eos,
            stop=stop,
            kwargs=kwargs,
            add_generation_prompt=add_generation_prompt,
            default_system=default_system,
        )
    except (TemplateCompileError, ValueError) as exc:
        problems.append((kind, f"{where}{exc}"))
        return None


def build_template(name: str, spec: Mapping[str, Any], base_dir: Path) -> Template:
    """Build and try the template described by one ``templates:`` entry; ``TemplateSpecError`` lists every problem."""
    if not isinstance(spec, Mapping):
        raise TemplateSpecError([("", f"must be a mapping, not {_type_name(spec)}")])
    if not spec:
        raise TemplateSpecError(
            [("", f"is empty: give role separators ({', '.join(ROLE_KEYS)}) or one of {', '.join(SOURCE_KEYS)}")]
        )
    problems: Problems = []
    sources = [key for key in SOURCE_KEYS if key in spec]
    if len(sources) > 1:
        problems.append(("", f"give only one of {', '.join(SOURCE_KEYS)} (got {', '.join(sources)})"))
    kind = sources[0] if sources else None
    allowed = _ROLE_OPTIONS if kind is None else _BUILTIN_OPTIONS if kind == "builtin" else _JINJA_OPTIONS
    for key in spec:
        if key in sources or key in allowed:
            continue
        if key in ROLE_KEYS:
            problems.append((str(key), f"role separators cannot be combined with '{kind}'"))
        else:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append((str(key), f"unknown key{hint}; expected one of: {', '.join((*sources, *allowed))}"))

    template: RoleTemplate | JinjaTemplate | None
    if kind is None:
        template = _role_template(name, spec, problems)
    else:
        template = _jinja_template(name, kind, spec, base_dir, problems)
    if template is not None:
        _try(template, kind or "", problems)
        if isinstance(template, JinjaTemplate) and "tool_use" in template.sources:
            _try(template, kind or "", problems, tools=True)
    if problems or template is None:
        raise TemplateSpecError(problems)
    return template
