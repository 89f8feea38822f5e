"""Conformance of JinjaTemplate with transformers' apply_chat_template on 257 reference renderings.

Each case holds a real model's chat template, its bos/eos tokens (null: the tokenizer has none, so the variable is
undefined), a conversation and either the exact string transformers 5.x rendered or the error it raised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mooltiproxy.errors import BadRequest
from mooltiproxy.prompters.jinja import JinjaTemplate

CASES_FILE = Path(__file__).parent / "data" / "chat_templates" / "cases.json"


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    return cases


CASES = _cases()


def test_the_reference_set_is_complete() -> None:
    assert len(CASES) == 257
    assert sum(1 for case in CASES if case["error"] is not None) == 27
    assert len({case["template_id"] for case in CASES}) == 28


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_case(case: dict[str, Any]) -> None:
    template = JinjaTemplate(
        case["template"],
        name=case["template_id"],
        bos_token=case["bos_token"],
        eos_token=case["eos_token"],
        kwargs=case.get("template_kwargs"),
    )
    messages = case["messages"]
    add_generation_prompt = case["add_generation_prompt"]
    tools = case.get("tools")
    if case["error"] is None:
        prompt = template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        assert prompt.text == case["expected"]
        assert prompt.stop == ([case["eos_token"]] if case["eos_token"] else [])
        return
    with pytest.raises(BadRequest) as info:
        template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
    assert info.value.param == "messages"
    assert info.value.status == 400
    # the template's own raise_exception text, or the exception as transformers reported it
    assert case["error"].removeprefix("TemplateError: ") in info.value.message
    assert f"template '{case['template_id']}'" in info.value.message
