"""Tool calls end to end: the openai SDK → the real gateway → the TGI simulator, for each tool-call format.

The simulator answers exactly the text of the last ``<<say:TEXT>>`` in the prompt, so the model "writes" the
tool-call text each template family uses, and the gateway must hand it back as OpenAI ``tool_calls``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import KEY, Gateway

CASES_FILE = Path(__file__).parent / "data" / "chat_templates" / "cases.json"

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

# what each family's model writes to call get_weather(city="Paris"); ending without ">" (the directive ends in >>)
CALL_TEXT = {
    "chatml": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n',
    "qwen2.5": 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n',
    "llama3.1": '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    "mistral": '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    "nemo": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
}


def _nemo_template() -> dict[str, Any]:
    cases = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    case = next(c for c in cases if c["template_id"] == "mistral-nemo-instruct-2407")
    return {"jinja": case["template"], "bos_token": case["bos_token"], "eos_token": case["eos_token"]}


def _config(url: str) -> dict[str, Any]:
    def chat(template: str) -> dict[str, Any]:
        return {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": template}

    targets: dict[str, Any] = {"default": "chatml"}
    for name in CALL_TEXT:
        targets[name] = {"url": url, "mapping": {"/chat/completions": chat(name)}}
    return {"targets": targets, "templates": {"nemo": _nemo_template()}}


@pytest.fixture
def gw(gateway: Any, tgi: str) -> Gateway:
    result: Gateway = gateway(_config(tgi))
    return result


def client_for(gw: Gateway, target: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, default_headers={"target": target})


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": f"What is the weather in Paris? <<say:{text}>>"}]


@pytest.mark.parametrize("target", list(CALL_TEXT))
def test_tool_call_answer(gw: Gateway, target: str) -> None:
    client = client_for(gw, target)
    answer = client.chat.completions.create(model="m", messages=ask(CALL_TEXT[target]), tools=TOOLS)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.message.content == ("Let me check." if target == "qwen2.5" else None)


@pytest.mark.parametrize("target", list(CALL_TEXT))
def test_tool_call_stream(gw: Gateway, target: str) -> None:
    client = client_for(gw, target)
    stream = client.chat.completions.create(model="m", messages=ask(CALL_TEXT[target]), tools=TOOLS, stream=True)
    content = ""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or ():
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            if part.function is not None:
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert calls[0]["id"]
    assert content == ("Let me check.\n" if target == "qwen2.5" else "")


def test_without_tools_the_text_stays_content(gw: Gateway) -> None:
    client = client_for(gw, "chatml")
    answer = client.chat.completions.create(model="m", messages=ask(CALL_TEXT["chatml"]))
    assert answer.choices[0].message.content == CALL_TEXT["chatml"]
    assert answer.choices[0].message.tool_calls is None
    none = client.chat.completions.create(model="m", messages=ask(CALL_TEXT["chatml"]), tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.content == CALL_TEXT["chatml"] and none.choices[0].finish_reason == "stop"


def test_text_that_is_not_a_call_stays_content(gw: Gateway) -> None:
    client = client_for(gw, "llama3.1")
    text = '{"name": "nobody", "parameters": {}}'  # not one of the tools
    answer = client.chat.completions.create(model="m", messages=ask(text), tools=TOOLS)
    assert answer.choices[0].message.content == text and answer.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="m", messages=ask(text), tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


@pytest.mark.parametrize("target", ["qwen2.5", "llama3.1", "nemo"])
def test_multi_turn_conversation_with_a_tool_result(gw: Gateway, target: str) -> None:
    client = client_for(gw, target)
    messages = ask(CALL_TEXT[target])
    first = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "<<say:It is sunny in Paris.>>"})
    template = gw.settings.targets[target].routes["/chat/completions"].template
    assert template is not None
    prompt = template.render(messages, tools=TOOLS).text  # the call is in the conversation the model gets back
    assert prompt.count("get_weather") == 3 and prompt.count("sunny") == 1
    if target == "nemo":
        assert calls[0].id in prompt
    second = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason == "stop"
