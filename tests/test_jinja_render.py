"""The chat-template renderer's context: the same text, and the same errors, as Jinja's own ``Template.render``."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest

from mooltiproxy.prompters import builtin_names, builtin_template
from mooltiproxy.prompters import jinja as jinja_module
from mooltiproxy.prompters.messages import check_messages, for_jinja

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi!", "reasoning_content": "greet back"},
    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
]


def _variables(template: jinja_module.JinjaTemplate) -> dict[str, Any]:
    return {
        **template._variables,
        "messages": for_jinja(check_messages(CHAT)),
        "tools": None,
        "documents": None,
        "add_generation_prompt": True,
    }


@pytest.mark.parametrize("name", builtin_names())
def test_render_matches_jinja_render(name: str) -> None:
    template = builtin_template(name)
    assert template is not None
    compiled = template._compiled["default"]
    variables = _variables(template)
    context = {**template._context["default"], **variables}
    try:
        expected = compiled.render(variables)
    except jinja2.TemplateError as exc:  # a template that refuses a system message (gemma)
        with pytest.raises(type(exc), match=exc.message or ""):
            jinja_module._render(compiled, context)
        return
    assert jinja_module._render(compiled, context) == expected
    assert template.render(CHAT).text == expected


def test_render_context_is_the_globals_then_the_variables() -> None:
    template = jinja_module.JinjaTemplate("{{ bos_token }}{{ x }}", bos_token="<s>", kwargs={"x": 1})
    context = template._context["default"]
    assert list(context)[-2:] == ["bos_token", "x"]
    assert context["raise_exception"] is jinja_module._raise_exception
    twin = template.derive(kwargs={"x": 2})
    assert twin._context["default"]["x"] == 2
    assert template._context["default"]["x"] == 1
    assert twin.render([{"role": "user", "content": "hi"}]).text == "<s>2"


def test_render_raises_what_jinja_raises() -> None:
    source = "{% for m in messages %}{{ raise_exception('no ' + m['role']) }}{% endfor %}"
    compiled = jinja_module._compile(source, None)
    context = {**compiled.globals, "messages": [{"role": "user"}]}
    with pytest.raises(jinja2.TemplateError) as ours:
        jinja_module._render(compiled, dict(context))
    with pytest.raises(jinja2.TemplateError) as theirs:
        compiled.render(dict(context))
    assert type(ours.value) is type(theirs.value)
    assert ours.value.message == theirs.value.message == "no user"
