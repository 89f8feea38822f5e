"""Tool-call text → calls: the parsers, the streaming reader, and which format a route's template has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mooltiproxy.config import build_settings
from mooltiproxy.errors import ConfigError
from mooltiproxy.mappers.toolcalls import (
    ParsedCalls,
    ToolCall,
    ToolTextStream,
    parse_hermes,
    parse_llama3,
    parse_mistral,
    parse_tool_calls,
    scan_markers,
    template_tool_format,
)
from mooltiproxy.prompters import JinjaTemplate, RoleTemplate, builtin_template

CASES_FILE = Path(__file__).parent / "data" / "chat_templates" / "cases.json"

WEATHER = ToolCall("get_weather", '{"city": "Paris"}')
TIME = ToolCall("get_time", '{"zone": "UTC"}')


def args(call: ToolCall) -> Any:
    return json.loads(call.arguments)


# -- hermes


def test_hermes_one_call() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert parse_hermes(text) == ParsedCalls(None, [WEATHER])


def test_hermes_several_calls_with_leading_text() -> None:
    text = (
        "Let me check both.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
    )
    assert parse_hermes(text) == ParsedCalls("Let me check both.", [WEATHER, TIME])


def test_hermes_without_closing_tags_and_with_text_after() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}<tool_call>{"name": "get_time", '
    text += '"arguments": {"zone": "UTC"}}'
    assert parse_hermes(text) == ParsedCalls(None, [WEATHER, TIME])
    after = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call> Done.'
    assert parse_hermes(after) == ParsedCalls("Done.", [WEATHER])


def test_hermes_arguments_as_a_json_string_or_missing() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>'
    assert parse_hermes(text) == ParsedCalls(None, [WEATHER])
    bare = '<tool_call>{"name": "now"}</tool_call>'
    assert parse_hermes(bare) == ParsedCalls(None, [ToolCall("now", "{}")])


@pytest.mark.parametrize(
    "text",
    [
        "Just an answer.",
        "<tool_call>\n{not json}\n</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<tool_call>{"name": "x", "arguments": [1]}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "x", "arguments": "not json"}</tool_call>',
        '<tool_call>{"name": "x", "arguments": {}}</tool_call><tool_call>{"name": </tool_call>',  # one is broken
        "<tool_call>",
    ],
)
def test_hermes_malformed_is_content(text: str) -> None:
    assert parse_hermes(text) is None
    assert parse_tool_calls("hermes", text) is None


# -- llama3


def test_llama3_python_tag_and_bare_json() -> None:
    tagged = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse_llama3(tagged) == ParsedCalls(None, [WEATHER])
    bare = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse_llama3(bare, {"get_weather"}) == ParsedCalls(None, [WEATHER])
    assert parse_llama3("  \n" + bare.replace("parameters", "arguments")) == ParsedCalls(None, [WEATHER])


def test_llama3_several_calls() -> None:
    one = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    two = '{"name": "get_time", "arguments": {"zone": "UTC"}}'
    for sep in (";", "; ", "\n", " ;\n"):
        assert parse_llama3(one + sep + two) == ParsedCalls(None, [WEATHER, TIME])
    assert parse_llama3("<|python_tag|>" + one + ";" + two + ";") == ParsedCalls(None, [WEATHER, TIME])


def test_llama3_leading_text_before_the_tag() -> None:
    text = 'Checking.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse_llama3(text) == ParsedCalls("Checking.", [WEATHER])


@pytest.mark.parametrize(
    "text",
    [
        "The weather is fine.",
        '{"name": "get_weather", "parameters": {"city": "Paris"}',  # cut short
        '{"name": "get_weather", "parameters": {"city": "Paris"}} and more',
        '{"answer": 42}',
        '<|python_tag|>brave_search.call(query="x")',
        'Here: {"name": "get_weather", "parameters": {}}',  # bare JSON only as the whole answer
    ],
)
def test_llama3_malformed_is_content(text: str) -> None:
    assert parse_llama3(text, {"get_weather"}) is None


def test_llama3_bare_json_must_name_a_tool() -> None:
    text = '{"name": "Ada", "parameters": {"age": 36}}'
    assert parse_llama3(text, {"get_weather"}) is None
    assert parse_llama3("<|python_tag|>" + text, {"get_weather"}) == ParsedCalls(None, [ToolCall("Ada", '{"age": 36}')])


# -- mistral


def test_mistral_array() -> None:
    text = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    text += '{"name": "get_time", "arguments": {"zone": "UTC"}, "id": "abcdefghi"}]'
    assert parse_mistral(text) == ParsedCalls(None, [WEATHER, TIME])
    assert parse_tool_calls("mistral", "Sure. " + text) == ParsedCalls("Sure.", [WEATHER, TIME])


def test_mistral_name_args_format() -> None:
    text = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"zone": "UTC"}'
    assert parse_mistral(text) == ParsedCalls(None, [WEATHER, TIME])


def test_mistral_bare_array_when_the_marker_is_a_special_token() -> None:
    text = ' [{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    assert parse_mistral(text, {"get_weather"}) == ParsedCalls(None, [WEATHER])
    assert parse_mistral(text, {"other"}) is None
    assert parse_mistral(text + " That is all.", {"get_weather"}) is None


@pytest.mark.parametrize(
    "text",
    [
        "No tools needed.",
        "[1, 2, 3]",
        "[TOOL_CALLS] [{",
        '[TOOL_CALLS] [{"name": "x", "arguments": 3}]',
        "[TOOL_CALLS]get weather[ARGS]{}",
        "[TOOL_CALLS]get_weather[ARGS][1]",
        "[TOOL_CALLS]get_weather",
    ],
)
def test_mistral_malformed_is_content(text: str) -> None:
    assert parse_mistral(text, {"x", "get_weather"}) is None


def test_unknown_format_parses_nothing() -> None:
    assert parse_tool_calls("none", '<tool_call>{"name": "x", "arguments": {}}</tool_call>') is None


# -- streaming


def test_scan_markers() -> None:
    assert scan_markers("hermes", "Hello <tool_call>", False) == (6, 0)
    assert scan_markers("hermes", "Hello <tool", False) == (-1, 5)
    assert scan_markers("hermes", "a < b", False) == (-1, 0)
    assert scan_markers("llama3", "  ", True) == (-1, 2)
    assert scan_markers("llama3", ' {"name"', True) == (1, 0)
    assert scan_markers("llama3", ' {"name"', False) == (-1, 0)
    assert scan_markers("llama3", "Hi <|python", True) == (-1, 8)
    assert scan_markers("mistral", " [ ", True) == (-1, 2)
    assert scan_markers("mistral", " [ {", True) == (1, 0)
    assert scan_markers("mistral", "[1", True) == (-1, 0)
    assert scan_markers("mistral", "x [TOOL_CALLS]", False) == (2, 0)
    assert scan_markers("hermes", " \n", True) == (-1, 2)
    assert scan_markers("hermes", " \n<tool_call>", True) == (2, 0)
    assert scan_markers("none", "<tool_call>", True) == (-1, 0)


CASES_STREAM = [
    (
        "hermes",
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "Let me look.\n",
        [WEATHER],
    ),
    ("hermes", "a <tool_ b <tool_call> oops", "a <tool_ b <tool_call> oops", []),
    ("hermes", "Plain text < with a bracket.", "Plain text < with a bracket.", []),
    ("hermes", '\n\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}', "", [WEATHER]),
    ("llama3", ' {"name": "get_weather", "parameters": {"city": "Paris"}}', "", [WEATHER]),
    ("llama3", ' {"not": "a call"}', ' {"not": "a call"}', []),
    ("llama3", 'Hmm <|python_tag|>{"name": "get_weather", "arguments": {"city": "Paris"}}', "Hmm ", [WEATHER]),
    ("llama3", "Sunny {all} day", "Sunny {all} day", []),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', "", [WEATHER]),
    ("mistral", '[{"name": "get_weather", "arguments": {"city": "Paris"}}]', "", [WEATHER]),
    ("mistral", "[see above] for details", "[see above] for details", []),
]


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES_STREAM)
def test_stream_cut_at_every_position(fmt: str, text: str, content: str, calls: list[ToolCall]) -> None:
    for cut in range(len(text) + 1):
        for pieces in ([text[:cut], text[cut:]], [text[:cut], *text[cut:]]):
            reader = ToolTextStream(fmt, {"get_weather"})
            sent = "".join(reader.feed(piece) for piece in pieces)
            rest, found = reader.end()
            assert found == calls, (cut, pieces)
            if calls:
                assert sent == content  # everything before the marker went out, nothing after it
            else:
                assert sent + rest == text  # never loses text
            assert (sent + rest == content) or calls


def test_stream_releases_plain_text_at_once() -> None:
    reader = ToolTextStream("hermes")
    assert reader.feed("Hello") == "Hello"
    assert reader.feed(" <") == " "  # could become <tool_call>
    assert reader.feed("b>") == "<b>"
    assert not reader.capturing
    assert reader.feed("<tool_call>{") == ""
    assert reader.capturing
    assert reader.feed('"name": "x"}') == ""
    assert reader.end() == ("", [ToolCall("x", "{}")])


# -- formats of templates


def _case_template(template_id: str) -> JinjaTemplate:
    cases = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    case = next(c for c in cases if c["template_id"] == template_id)
    return JinjaTemplate(case["template"], name="mine", bos_token=case["bos_token"], eos_token=case["eos_token"])


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("llama3.1", "llama3"), ("qwen2.5", "hermes"), ("chatml", "hermes"), ("qwen", "hermes"), ("mistral", "mistral")]
    + [(n, "none") for n in ("llama2", "llama3", "zephyr", "gemma", "phi3", "falcon", "vicuna", "alpaca", "deepseek")],
)
def test_builtin_template_formats(name: str, fmt: str) -> None:
    assert template_tool_format(builtin_template(name), builtin=True) == fmt


@pytest.mark.parametrize(
    ("template_id", "fmt"),
    [
        ("llama-3.1-instruct", "llama3"),
        ("llama-3.2-instruct", "llama3"),
        ("qwen2.5-instruct", "hermes"),
        ("qwen3", "hermes"),
        ("mistral-7b-instruct-v0.3", "mistral"),
        ("mistral-nemo-instruct-2407", "mistral"),
        ("openhermes-2.5-chatml", "none"),
        ("granite-3.0-instruct", "none"),
        ("gemma-it", "none"),
    ],
)
def test_jinja_template_formats_from_their_markers(template_id: str, fmt: str) -> None:
    assert template_tool_format(_case_template(template_id), builtin=False) == fmt


def test_role_templates_have_no_format() -> None:
    role = RoleTemplate(name="r", user="U: ", assistant="A: ")
    assert template_tool_format(role, builtin=False) == "none"
    assert template_tool_format(None, builtin=False) == "none"


# -- configuration


def _settings(entry: dict[str, Any], templates: dict[str, Any] | None = None) -> Any:
    mapping = {"/chat/completions": {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI"}}
    mapping["/chat/completions"].update(entry)
    raw: dict[str, Any] = {"targets": {"default": "t", "t": {"url": "http://127.0.0.1:1", "mapping": mapping}}}
    if templates is not None:
        raw["templates"] = templates
    return build_settings(raw, {"MOOLTIPROXY_KEY": "k" * 16}, base_dir=Path("."), source="test")


def _format(settings: Any) -> Any:
    return settings.targets["t"].routes["/chat/completions"].entry.get("tool_format")


def test_tool_format_is_derived_at_start_up() -> None:
    assert _format(_settings({"template": "qwen2.5"})) == "hermes"
    assert _format(_settings({"template": "llama3.1"})) == "llama3"
    assert _format(_settings({"template": "Mistral"})) == "mistral"
    assert _format(_settings({"template": "zephyr"})) == "none"
    assert _format(_settings({"template": "zephyr", "tool_format": "hermes"})) == "hermes"
    assert _format(_settings({"template": "qwen2.5", "tool_format": "none"})) == "none"
    assert _format(_settings({})) is None
    # a template of the config named like a built-in one: judged by its source
    mine = {"mistral": {"jinja": "{% for m in messages %}<tool_call>{{ m.content }}{% endfor %}"}}
    assert _format(_settings({"template": "mistral"}, mine)) == "hermes"


def test_an_unknown_tool_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        _settings({"template": "chatml", "tool_format": "qwen"})
    text = str(info.value)
    assert "targets.t.mapping./chat/completions.tool_format" in text
    assert "'llama3', 'hermes', 'mistral' or 'none'" in text
