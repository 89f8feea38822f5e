"""Prompters: the original fromTemplate/llama2_chat formats, Jinja templates, the library and config entries."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mooltiproxy.errors import BadRequest
from mooltiproxy.plugin import MappingContext, Prompt, Template
from mooltiproxy.prompters import (
    DEFAULT_SYSTEM_PROMPT,
    JinjaTemplate,
    RoleTemplate,
    TemplateSpecError,
    build_template,
    builtin_names,
    builtin_template,
    from_template,
    library,
    llama2_chat,
    with_default_system,
)
from mooltiproxy.prompters import jinja as jinja_module
from mooltiproxy.prompters.messages import check_messages

CASES_FILE = Path(__file__).parent / "data" / "chat_templates" / "cases.json"

# the two role templates of the original example config
HUMAN_RESPONSE = {
    "preprompt": "",
    "start": "",
    "system": "",
    "user": "\n### HUMAN:\n",
    "assistant": "\n### RESPONSE:\n",
}
FALCON_INSTRUCT = {"preprompt": "", "start": "", "system": "", "user": ">>>QUESTION<<<", "assistant": ">>>ANSWER<<<"}

SYSTEM = {"role": "system", "content": "You are Bob."}
CHAT = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hello! How can I assist you today?"},
    {"role": "user", "content": "tell me a joke"},
]


def ctx(template: Template | None = None, payload: Any = None, entry: dict[str, Any] | None = None) -> MappingContext:
    return MappingContext(
        target="t", path="/chat/completions", upstream_path="/generate", template=template, payload=payload, entry=entry
    )


def role(spec: dict[str, Any], name: str = "t") -> Template:
    return build_template(name, spec, Path("."))


def problems(name: str, spec: Any, base_dir: Path = Path(".")) -> list[tuple[str, str]]:
    with pytest.raises(TemplateSpecError) as info:
        build_template(name, spec, base_dir)
    return info.value.problems


# --- fromTemplate with role templates -------------------------------------------------------------------------------


def test_human_response_with_system_message() -> None:
    prompt = from_template([SYSTEM, *CHAT], ctx(role(HUMAN_RESPONSE)))
    assert prompt == Prompt(
        "You are Bob.\n### HUMAN:\nHello\n### RESPONSE:\nHello! How can I assist you today?"
        "\n### HUMAN:\ntell me a joke\n### RESPONSE:\n",
        ["\n### HUMAN:\n"],
    )


def test_falcon_instruct_uses_the_default_system_prompt() -> None:
    prompt = from_template(CHAT, ctx(role(FALCON_INSTRUCT)))
    assert prompt == Prompt(
        DEFAULT_SYSTEM_PROMPT
        + ">>>QUESTION<<<Hello>>>ANSWER<<<Hello! How can I assist you today?>>>QUESTION<<<tell me a joke>>>ANSWER<<<",
        [">>>QUESTION<<<"],
    )


def test_default_system_prompt_is_the_original_one() -> None:
    assert DEFAULT_SYSTEM_PROMPT == (
        "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
        " Please ensure that your responses are socially unbiased and positive in nature. If a question does not make"
        " any sense, or is not factually coherent, explain why instead of answering something not correct. If you"
        " don't know the answer to a question, please don't share false information."
    )


def test_all_role_keys_and_later_system_messages() -> None:
    template = role({"preprompt": "<P>", "start": "<S>", "system": "<sys>", "user": "<u>", "assistant": "<a>"})
    messages = [SYSTEM, CHAT[0], {"role": "system", "content": "Be brief."}, CHAT[2]]
    assert from_template(messages, ctx(template)).text == "<P>You are Bob.<S><u>Hello<sys>Be brief.<u>tell me a joke<a>"


def test_missing_role_keys_default_to_empty() -> None:
    assert role({"user": "U:", "assistant": "A:"}).render([SYSTEM, CHAT[0]]) == Prompt("You are Bob.U:HelloA:", ["U:"])


def test_configurable_default_system() -> None:
    template = role({**HUMAN_RESPONSE, "default_system": "Answer in French."})
    assert template.render(CHAT[:1]).text == "Answer in French.\n### HUMAN:\nHello\n### RESPONSE:\n"
    # an explicit system message still wins
    assert template.render([SYSTEM, CHAT[0]]).text == "You are Bob.\n### HUMAN:\nHello\n### RESPONSE:\n"


def test_empty_default_system_means_no_system_prompt() -> None:
    template = role({"preprompt": "[", "start": "]", "user": "U:", "assistant": "A:", "default_system": ""})
    assert template.render(CHAT[:1]).text == "[]U:HelloA:"


def test_stop_override_string_and_list() -> None:
    assert role({**HUMAN_RESPONSE, "stop": "###"}).stop == ["###"]
    assert role({**HUMAN_RESPONSE, "stop": ["###", "\n\n"]}).render(CHAT[:1]).stop == ["###", "\n\n"]
    assert role({**HUMAN_RESPONSE, "stop": []}).stop == []
    # an empty user separator would stop every answer at once: no stop rather than ""
    assert role({"assistant": "A:"}).stop == []


def test_no_generation_prompt() -> None:
    assert role(FALCON_INSTRUCT).render([SYSTEM, CHAT[0]], add_generation_prompt=False).text == (
        "You are Bob.>>>QUESTION<<<Hello"
    )


def test_developer_is_system() -> None:
    messages = [{"role": "developer", "content": "Be brief."}, CHAT[0]]
    assert role(FALCON_INSTRUCT).render(messages).text == "Be brief.>>>QUESTION<<<Hello>>>ANSWER<<<"


@pytest.mark.parametrize("bad_role", ["tool", "function", "critic"])
def test_unknown_roles_are_refused_by_name(bad_role: str) -> None:
    messages = [*CHAT[:2], {"role": bad_role, "content": "x", "tool_call_id": "a"}]
    with pytest.raises(BadRequest) as info:
        from_template(messages, ctx(role(HUMAN_RESPONSE, "HumanResponse")))
    assert info.value.param == "messages"
    assert info.value.message == (
        f"messages[2]: role '{bad_role}' is not supported by template 'HumanResponse' (only system, user and assistant)"
    )


def test_tool_calls_are_refused_by_role_templates() -> None:
    messages: list[dict[str, Any]] = [
        CHAT[0],
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
    ]
    with pytest.raises(BadRequest, match=r"messages\[1\]: tool calls cannot be rendered by template 't'"):
        role(HUMAN_RESPONSE).render(messages)


def test_role_template_ignores_tools_and_null_content() -> None:
    messages: list[dict[str, Any]] = [CHAT[0], {"role": "assistant", "content": None}, CHAT[2]]
    prompt = from_template(messages, ctx(role(FALCON_INSTRUCT), payload={"tools": [{"type": "function"}]}))
    assert prompt.text.endswith(">>>QUESTION<<<Hello>>>ANSWER<<<>>>QUESTION<<<tell me a joke>>>ANSWER<<<")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "'messages' must not be empty"),
        ("hello", "'messages' must be a list of message objects"),
        ([CHAT[0], "hi"], "messages[1] must be an object"),
        ([{"content": "hi"}], "messages[0].role must be a string"),
        ([{"role": "user", "content": 3}], "messages[0].content must be a string or a list of text parts"),
    ],
)
def test_malformed_messages(messages: Any, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        role(HUMAN_RESPONSE).render(messages)
    assert info.value.message == message
    assert info.value.param == "messages"


@pytest.mark.parametrize("content", [3, 1.5, True, False, {"type": "text", "text": "hi"}])
def test_content_of_a_wrong_type_is_refused_by_every_renderer(content: Any) -> None:
    messages = [SYSTEM, {"role": "user", "content": content}]
    renderers = [role(HUMAN_RESPONSE).render, builtin_template("chatml").render, lambda m: llama2_chat(m, ctx())]
    for render in renderers:
        with pytest.raises(BadRequest) as info:
            render(messages)
        assert info.value.message == "messages[1].content must be a string or a list of text parts"
        assert info.value.param == "messages"


def test_messages_are_checked_once() -> None:
    messages = [SYSTEM, {"role": "assistant", "content": None, "tool_calls": []}, CHAT[0]]
    checked = check_messages(messages)
    assert checked == messages
    assert check_messages(checked) is checked  # a list already checked is not walked again
    assert check_messages(list(checked)) is not checked  # a copy (maybe changed) is checked again


def test_fixed_settings_are_resolved_at_construction_and_by_derive() -> None:
    template = JinjaTemplate("{{ bos_token }}|{{ x }}|{{ y }}", bos_token="<s>", kwargs={"x": 1})
    twin = template.derive(kwargs={"y": 2})
    assert template.render(CHAT).text == "<s>|1|"
    assert twin.render(CHAT).text == "<s>|1|2"
    assert twin.render(CHAT, x=3).text == "<s>|3|2"
    plain = RoleTemplate("r", user="U:", assistant="A:")
    assert plain.render(CHAT[:1]).text == DEFAULT_SYSTEM_PROMPT + "U:HelloA:"
    assert with_default_system(plain, "Sys.").render(CHAT[:1]).text == "Sys.U:HelloA:"
    assert plain.render(CHAT[:1]).text == DEFAULT_SYSTEM_PROMPT + "U:HelloA:"


def test_from_template_without_template() -> None:
    with pytest.raises(BadRequest, match="no prompt template"):
        from_template(CHAT, ctx())


def test_role_template_reads_like_the_original_mapping() -> None:
    template = role(HUMAN_RESPONSE)
    assert isinstance(template, RoleTemplate)
    assert template["user"] == "\n### HUMAN:\n"
    assert template["preprompt"] == ""
    assert isinstance(template, Template)


# --- content parts --------------------------------------------------------------------------------------------------


def test_text_content_parts_are_joined_with_newlines() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    messages = [{"role": "system", "content": [{"type": "text", "text": "sys"}]}, {"role": "user", "content": parts}]
    assert role(FALCON_INSTRUCT).render(messages).text == "sys>>>QUESTION<<<first\nsecond>>>ANSWER<<<"
    assert llama2_chat(messages, ctx()).text == "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nfirst\nsecond [/INST]"
    jinja = JinjaTemplate("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert jinja.render(messages).text == "[sys][first\nsecond]"


def test_non_text_content_parts_are_refused() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, image]}]
    for render in (role(HUMAN_RESPONSE).render, JinjaTemplate("{{ messages }}").render):
        with pytest.raises(BadRequest) as info:
            render(messages)
        assert info.value.message == "messages[0].content[1]: only text content parts are supported (got 'image_url')"


# --- llama2_chat ----------------------------------------------------------------------------------------------------


def test_llama2_chat_original_example() -> None:
    messages = [{"role": "system", "content": "You are an helpful assistant named Bob."}, *CHAT]
    assert llama2_chat(messages, ctx()) == Prompt(
        "<s>[INST] <<SYS>>\nYou are an helpful assistant named Bob.\n<</SYS>>\n\nHello [/INST] "
        "Hello! How can I assist you today? </s><s>[INST] tell me a joke [/INST]",
        ["[INST]"],
    )


def test_llama2_chat_default_system_and_stripping() -> None:
    prompt = llama2_chat([{"role": "user", "content": "  Hi there \n"}], ctx())
    assert prompt.text == f"<s>[INST] <<SYS>>\n{DEFAULT_SYSTEM_PROMPT}\n<</SYS>>\n\n  Hi there [/INST]"
    messages = [
        {"role": "user", "content": " a "},
        {"role": "assistant", "content": "\tb\n"},
        {"role": "user", "content": "c"},
    ]
    assert llama2_chat(messages, ctx(entry={"default_system": ""})).text == (
        "<s>[INST] a [/INST] b </s><s>[INST] c [/INST]"
    )


def test_llama2_chat_default_system_from_route_then_template() -> None:
    template = role({**HUMAN_RESPONSE, "default_system": "From the template."})
    expected = "<s>[INST] <<SYS>>\n{}\n<</SYS>>\n\nHello [/INST]"
    assert llama2_chat(CHAT[:1], ctx(template)).text == expected.format("From the template.")
    assert llama2_chat(CHAT[:1], ctx(template, entry={"default_system": "From the route."})).text == expected.format(
        "From the route."
    )
    assert llama2_chat(CHAT[:1], ctx(template, entry={"default_system": ""})).text == "<s>[INST] Hello [/INST]"


def test_llama2_chat_empty_system_message_keeps_the_block() -> None:
    prompt = llama2_chat([{"role": "developer", "content": ""}, CHAT[0]], ctx())
    assert prompt.text == "<s>[INST] <<SYS>>\n\n<</SYS>>\n\nHello [/INST]"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [CHAT[0], CHAT[0]],
            "llama2_chat: conversation roles must alternate user/assistant/user/...; "
            "messages[1] is 'user' where 'assistant' was expected",
        ),
        (
            [SYSTEM, CHAT[1], CHAT[0]],
            "llama2_chat: conversation roles must alternate user/assistant/user/...; "
            "messages[1] is 'assistant' where 'user' was expected",
        ),
        ([CHAT[0], SYSTEM, CHAT[0]], "llama2_chat: messages[1] is a system message; only the first message may be one"),
        (CHAT[:2], "llama2_chat: the conversation must end with a user message"),
        ([SYSTEM], "llama2_chat needs at least one user message"),
        (
            [CHAT[0], {"role": "tool", "content": "42"}],
            "messages[1]: role 'tool' is not supported by llama2_chat (only system, user and assistant)",
        ),
    ],
)
def test_llama2_chat_refusals(messages: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        llama2_chat(messages, ctx())
    assert info.value.message == message
    assert info.value.param == "messages"


# --- Jinja templates ------------------------------------------------------------------------------------------------


def test_from_template_passes_the_request_tools() -> None:
    template = JinjaTemplate("{{ tools | tojson if tools is not none else 'none' }}|{{ messages | length }}")
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert from_template(CHAT, ctx(template, payload={"tools": tools})).text == (
        '[{"type": "function", "function": {"name": "f"}}]|3'
    )
    assert from_template(CHAT, ctx(template, payload={"messages": CHAT})).text == "none|3"
    assert from_template(CHAT, ctx(template, payload=[1])).text == "none|3"
    with pytest.raises(BadRequest) as info:
        from_template(CHAT, ctx(template, payload={"tools": "f"}))
    assert info.value.param == "tools"


def test_transformers_variables() -> None:
    source = (
        "{{ bos_token is defined }} {{ eos_token }} {{ tools is none }} {{ documents is none }} "
        "{{ add_generation_prompt }} {{ date_string }}"
    )
    template = JinjaTemplate(source, eos_token="</s>", kwargs={"date_string": "1 Jan"})
    assert template.render(CHAT).text == "False </s> True True True 1 Jan"
    assert template.render(CHAT, add_generation_prompt=False, date_string="2 Feb").text == (
        "False </s> True True False 2 Feb"
    )
    # caller kwargs win over the tokens, like transformers' {**special_tokens_map, **kwargs}
    assert template.render(CHAT, eos_token="<eos>").text.startswith("False <eos> ")
    assert JinjaTemplate("{{ add_generation_prompt }}", add_generation_prompt=False).render(CHAT).text == "False"


def test_undefined_token_fails_like_transformers() -> None:
    template = JinjaTemplate("{{ bos_token + 'x' }}", name="needs-bos")
    with pytest.raises(BadRequest) as info:
        template.render(CHAT)
    assert info.value.message == (
        "template 'needs-bos' refused the conversation: UndefinedError: 'bos_token' is undefined"
    )


def test_messages_as_transformers_5_passes_them() -> None:
    source = (
        "{% for m in messages %}{{ m.role }}:{{ 'content' in m }}:{{ m.name }}:{{ m.tool_call_id }}:"
        "{{ m.tool_calls | length if m.tool_calls is defined else '-' }}:{{ m.reasoning_content }}/{{ m.thinking }};"
        "{% endfor %}"
    )
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}], "reasoning": "hmm"},
        {"role": "tool", "content": "42", "tool_call_id": "1", "name": None},
    ]
    assert JinjaTemplate(source).render(messages).text == (
        "user:True:ann::-:/;assistant:False:::1:hmm/hmm;tool:True::1:-:/;"
    )


def test_tojson_filter_is_plain_json() -> None:
    template = JinjaTemplate("{{ messages[0].content | tojson }} {{ {'b': [1, 2]} | tojson(indent=2) }}")
    text = template.render([{"role": "user", "content": "São <b> & 'x'"}]).text
    assert text == '"São <b> & \'x\'" {\n  "b": [\n    1,\n    2\n  ]\n}'


def test_generation_tag_loop_controls_and_whitespace_control() -> None:
    source = (
        "{% for m in messages %}\n"
        "  {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "  {% generation %}<{{ m.content }}>{% endgeneration %}\n"
        "{% endfor %}"
    )
    assert JinjaTemplate(source).render(CHAT).text == "<Hello><Hello! How can I assist you today?>"


def test_raise_exception_and_strftime_now() -> None:
    template = JinjaTemplate("{{ raise_exception('No system messages, please') }}", name="strict")
    with pytest.raises(BadRequest) as info:
        template.render(CHAT)
    assert info.value.message == "template 'strict' refused the conversation: No system messages, please"
    before = datetime.now().strftime("%Y-%m-%d")
    text = JinjaTemplate("{{ strftime_now('%Y-%m-%d') }}").render(CHAT).text
    assert text in {before, datetime.now().strftime("%Y-%m-%d")}


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("{{ messages.append(1) }}", "SecurityError: access to attribute 'append' of 'list' object is unsafe."),
        ("{{ messages.__class__ }}", ""),
        ("{{ 1 + messages }}", "TypeError: unsupported operand type(s) for +: 'int' and 'list'"),
        ("{{ messages[9].content }}", "UndefinedError: list object has no element 9"),
    ],
)
def test_template_failures_become_bad_requests(source: str, detail: str) -> None:
    template = JinjaTemplate(source, name="broken")
    if not detail:  # the sandbox hides private attributes: they render as undefined
        assert template.render(CHAT).text == ""
        return
    with pytest.raises(BadRequest) as info:
        template.render(CHAT)
    assert info.value.message.startswith("template 'broken' ")
    assert info.value.message.endswith(detail)
    assert info.value.param == "messages"


def test_templates_are_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    compile_once = jinja_module._compile

    def counting(source: str, variant: str | None) -> Any:
        calls.append(source)
        return compile_once(source, variant)

    monkeypatch.setattr(jinja_module, "_compile", counting)
    template = JinjaTemplate("{{ messages[-1].content }}")
    for _ in range(3):
        assert template.render(CHAT).text == "tell me a joke"
    assert template.derive(stop=["x"]).render(CHAT) == Prompt("tell me a joke", ["x"])
    assert calls == ["{{ messages[-1].content }}"]


def test_named_templates_pick_tool_use_when_tools_are_given() -> None:
    template = JinjaTemplate({"default": "plain", "tool_use": "tools:{{ tools | length }}"}, eos_token="<e>")
    assert template.render(CHAT) == Prompt("plain", ["<e>"])
    assert template.render(CHAT, tools=[]).text == "tools:0"
    assert JinjaTemplate({"default": "plain", "rag": "x"}).render(CHAT, tools=[{}]).text == "plain"
    with pytest.raises(ValueError, match="no 'default' template"):
        JinjaTemplate({"tool_use": "x"})


def test_jinja_default_system_is_injected_when_missing() -> None:
    template = JinjaTemplate("{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}", default_system="Hi.")
    assert template.render(CHAT[:1]).text == "system=Hi.;user=Hello;"
    assert template.render([SYSTEM, CHAT[0]]).text == "system=You are Bob.;user=Hello;"
    assert template.derive(default_system="").render(CHAT[:1]).text == "user=Hello;"


# --- the built-in library -------------------------------------------------------------------------------------------

SAMPLE = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Joke?"},
]

LIBRARY: dict[str, tuple[str, list[str]]] = {
    "alpaca": (
        "<s>### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n### Instruction:\nJoke?\n\n### Response:\n",
        ["</s>", "### Instruction:"],
    ),
    "chatml": (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nJoke?<|im_end|>\n"
        "<|im_start|>assistant\n",
        ["<|im_end|>", "<|im_start|>"],
    ),
    "deepseek": (
        "<｜begin▁of▁sentence｜>User: Hi\n\nAssistant: Hello!<｜end▁of▁sentence｜>User: Joke?\n\nAssistant:",
        ["<｜end▁of▁sentence｜>", "User:"],
    ),
    "falcon": ("User: Hi\nFalcon: Hello!\nUser: Joke?\nFalcon:", ["<|endoftext|>", "\nUser:"]),
    "gemma": (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\n"
        "Joke?<end_of_turn>\n<start_of_turn>model\n",
        ["<end_of_turn>", "<eos>"],
    ),
    "llama2": ("<s>[INST] Hi [/INST] Hello! </s><s>[INST] Joke? [/INST]", ["</s>", "[INST]"]),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nJoke?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|eot_id|>", "<|end_of_text|>"],
    ),
    "llama3.1": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>"
        "\n\nJoke?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"],
    ),
    "mistral": ("<s> [INST] Hi [/INST] Hello!</s> [INST] Joke? [/INST]", ["</s>", "[INST]"]),
    "phi3": (
        "<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nJoke?<|end|>\n<|assistant|>\n",
        ["<|end|>", "<|endoftext|>"],
    ),
    "qwen2.5": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nJoke?<|im_end|>\n"
        "<|im_start|>assistant\n",
        ["<|im_end|>", "<|im_start|>", "<|endoftext|>"],
    ),
    "vicuna": ("<s>USER: Hi\nASSISTANT: Hello!</s>\nUSER: Joke?\nASSISTANT:", ["</s>", "USER:"]),
    "zephyr": (
        "<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\nJoke?</s>\n<|assistant|>\n",
        ["</s>", "<|user|>"],
    ),
}
LIBRARY["qwen"] = LIBRARY["chatml"]

# which reference template each built-in is, byte for byte
LIBRARY_SOURCES = {
    "llama2": "llama-2-chat",
    "llama3": "llama-3-instruct",
    "llama3.1": "llama-3.1-instruct",
    "mistral": "mistral-7b-instruct-v0.2-v1tmpl",
    "chatml": "openhermes-2.5-chatml",
    "qwen2.5": "qwen2.5-instruct",
    "zephyr": "zephyr-7b-beta",
    "gemma": "gemma-it",
    "phi3": "phi-3.5-mini-instruct",
    "falcon": "falcon-180b-chat",
    "vicuna": "vicuna-v1.5",
    "alpaca": "alpaca",
    "deepseek": "deepseek-llm-7b-chat",
}


def test_library_names() -> None:
    assert builtin_names() == sorted(LIBRARY)
    for name in ("llama2", "llama3", "mistral", "chatml", "qwen", "zephyr", "gemma", "phi3", "falcon", "vicuna"):
        assert name in builtin_names()
    assert builtin_template("nope") is None


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_every_builtin_renders_a_sample_and_has_stops(name: str) -> None:
    template = builtin_template(name)
    assert template is not None
    expected, stops = LIBRARY[name]
    assert template.render(SAMPLE) == Prompt(expected, stops)
    assert builtin_template(name.upper()) is template  # built once, looked up case-insensitively


def test_builtins_are_built_on_first_lookup_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    compile_once = jinja_module._compile

    def counting(source: str, variant: str | None) -> Any:
        calls.append(source)
        return compile_once(source, variant)

    monkeypatch.setattr(library, "_built", {})
    monkeypatch.setattr(jinja_module, "_compile", counting)
    assert calls == []
    first = builtin_template("zephyr")
    assert builtin_template("Zephyr") is first
    assert builtin_template("zephyr") is first
    assert first is not None and calls == [first.sources["default"]]


def test_qwen_is_an_alias_of_chatml() -> None:
    assert builtin_template("qwen") is builtin_template("chatml")


@pytest.mark.parametrize("name", sorted(LIBRARY_SOURCES))
def test_builtins_are_the_reference_templates(name: str) -> None:
    cases = [c for c in json.loads(CASES_FILE.read_text(encoding="utf-8")) if c["template_id"] == LIBRARY_SOURCES[name]]
    template = builtin_template(name)
    assert isinstance(template, JinjaTemplate)
    assert template.sources == {"default": cases[0]["template"]}
    assert template.eos_token == cases[0]["eos_token"]
    # plain ChatML reads no bos token, so the generic entry has none (OpenHermes' tokenizer has "<s>")
    assert template.bos_token == (None if name == "chatml" else cases[0]["bos_token"])
    for case in cases:
        render = template.render
        kwargs = case.get("template_kwargs") or {}
        if case["error"]:
            with pytest.raises(BadRequest):
                render(case["messages"], add_generation_prompt=case["add_generation_prompt"], tools=case.get("tools"))
        else:
            prompt = render(
                case["messages"], add_generation_prompt=case["add_generation_prompt"], tools=case.get("tools"), **kwargs
            )
            assert prompt.text == case["expected"], case["id"]


# --- build_template -------------------------------------------------------------------------------------------------


def test_build_inline_jinja_with_options() -> None:
    template = build_template(
        "mine",
        {
            "jinja": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{{ today }}",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "kwargs": {"today": "Monday"},
        },
        Path("."),
    )
    assert template.name == "mine"
    assert template.render(CHAT[:1]) == Prompt("<s>Hello</s>Monday", ["</s>"])
    explicit = build_template("x", {"jinja": "{{ messages[0].content }}", "stop": ["END"]}, Path("."))
    assert explicit.render(CHAT) == Prompt("Hello", ["END"])
    assert build_template("y", {"jinja": "{{ messages[0].content }}"}, Path(".")).stop == []


def test_build_from_file_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.jinja").write_text(
        "{% for m in messages %}\n{{ m.role }}: {{ m.content }}\n{% endfor %}", encoding="utf-8-sig"
    )
    template = build_template("t", {"file": "templates/t.jinja", "add_generation_prompt": False}, tmp_path)
    assert template.render(CHAT[:2]).text == "user: Hello\nassistant: Hello! How can I assist you today?\n"


def test_build_from_tokenizer_config(tmp_path: Path) -> None:
    config = {
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}{{ messages[-1].content }}"},
            {"name": "tool_use", "template": "{{ bos_token }}{{ tools[0].function.name }}:{{ messages[-1].content }}"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    template = build_template("hf", {"tokenizer_config": "tokenizer_config.json"}, tmp_path)
    assert template.render(CHAT) == Prompt("<s>tell me a joke", ["</s>"])
    tools = [{"type": "function", "function": {"name": "joke"}}]
    assert template.render(CHAT, tools=tools).text == "<s>joke:tell me a joke"
    # entry overrides, and the folder form
    again = build_template("hf", {"tokenizer_config": str(tmp_path), "bos_token": "[B]", "stop": ["\n"]}, Path("/"))
    assert again.render(CHAT) == Prompt("[B]tell me a joke", ["\n"])


def test_tokenizer_config_with_template_file_beside_it(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>", "bos_token": null}', encoding="utf-8")
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}{{ bos_token }}", encoding="utf-8")
    template = build_template("hf", {"tokenizer_config": "."}, tmp_path)
    assert template.render(CHAT) == Prompt("3", ["<|im_end|>"])


def test_build_builtin_with_overrides() -> None:
    template = build_template(
        "my-chatml", {"builtin": "ChatML", "stop": "<|im_end|>", "default_system": "Be brief."}, Path(".")
    )
    assert template.name == "my-chatml"
    assert template.render(CHAT[:1]) == Prompt(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
        ["<|im_end|>"],
    )
    dated = build_template("l32", {"builtin": "llama3.1", "kwargs": {"date_string": "1 Jan 2025"}}, Path("."))
    assert "Today Date: 1 Jan 2025\n" in dated.render(CHAT[:1]).text
    assert builtin_template("chatml") is not template  # the library's own template is untouched
    assert builtin_template("chatml").stop == ["<|im_end|>", "<|im_start|>"]  # type: ignore[union-attr]


def test_build_reports_every_problem_with_its_path() -> None:
    found = problems(
        "x",
        {
            "jinja": "line one\n{% if %}",
            "stop": ["ok", 1, ""],
            "kwargs": {"messages": [], "date_string": "x"},
            "add_generation_prompt": "yes",
            "bos_token": 1,
            "user": "U:",
            "temperature": 0.5,
        },
    )
    assert [path for path, _ in found] == [
        "user",
        "temperature",
        "stop[1]",
        "stop[2]",
        "kwargs.messages",
        "add_generation_prompt",
        "bos_token",
        "jinja",
    ]
    messages = dict(found)
    assert messages["user"] == "role separators cannot be combined with 'jinja'"
    assert messages["temperature"].startswith("unknown key; expected one of: jinja, bos_token, eos_token, stop,")
    assert messages["stop[2]"] == "must be a non-empty string, got ''"
    assert messages["kwargs.messages"] == "is set by the renderer and cannot be given"
    assert messages["jinja"] == "Jinja syntax error on line 2: Expected an expression, got 'end of statement block'"


def test_build_reports_role_template_problems() -> None:
    found = problems("r", {"user": 3, "asistant": "A:", "default_system": None, "stop": {"a": 1}})
    assert found == [
        (
            "asistant",
            "unknown key (did you mean 'assistant'?); expected one of: preprompt, start, system, user, "
            "assistant, default_system, stop",
        ),
        ("user", "must be a string, not int"),
        ("default_system", "must be a string, not null"),
        ("stop", "must be a string or a list of strings, not dict"),
    ]
    error = TemplateSpecError(found[:2])
    assert str(error).startswith("asistant: unknown key")
    assert "; user: must be a string, not int" in str(error)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("chatml", [("", "must be a mapping, not str")]),
        (
            {},
            [
                (
                    "",
                    "is empty: give role separators (preprompt, start, system, user, assistant) "
                    "or one of jinja, file, tokenizer_config, builtin",
                )
            ],
        ),
        (
            {"jinja": "x", "builtin": "chatml"},
            [("", "give only one of jinja, file, tokenizer_config, builtin (got jinja, builtin)")],
        ),
        ({"jinja": ""}, [("jinja", "must be the template source, not empty")]),
        ({"file": ["a"]}, [("file", "must be a file path, not list")]),
        (
            {"builtin": "lama3"},
            [
                (
                    "builtin",
                    "unknown built-in template 'lama3' (did you mean 'llama3'?); known: " + ", ".join(sorted(LIBRARY)),
                )
            ],
        ),
        (
            {"builtin": "gemma", "eos_token": "x"},
            [("eos_token", "unknown key; expected one of: builtin, stop, default_system, kwargs")],
        ),
    ],
)
def test_build_entry_level_problems(spec: Any, expected: list[tuple[str, str]]) -> None:
    assert problems("e", spec) == expected


def test_build_reports_syntax_errors_in_files(tmp_path: Path) -> None:
    (tmp_path / "t.jinja").write_text("{% for m in messages %}\n{{ m.content }}\n", encoding="utf-8")
    assert problems("t", {"file": "t.jinja"}, tmp_path) == [
        (
            "file",
            f"'{tmp_path / 't.jinja'}': Jinja syntax error on line 2: Unexpected end of template. Jinja was "
            "looking for the following tags: 'endfor' or 'else'. The innermost block that needs to be closed "
            "is 'for'.",
        )
    ]
    named = [{"name": "default", "template": "ok"}, {"name": "tool_use", "template": "{{ x"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}), encoding="utf-8")
    [(path, message)] = problems("t", {"tokenizer_config": "."}, tmp_path)
    assert (path, message.split(": Jinja")[0]) == ("tokenizer_config", f"'{tmp_path}': template 'tool_use'")
    assert " syntax error on line 1: " in message


def test_build_reports_unreadable_files(tmp_path: Path) -> None:
    assert problems("f", {"file": "missing.jinja"}, tmp_path) == [
        ("file", f"cannot read '{tmp_path / 'missing.jinja'}': No such file or directory")
    ]
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    [(path, message)] = problems("t", {"tokenizer_config": "bad.json"}, tmp_path)
    assert path == "tokenizer_config"
    assert message.startswith(f"'{tmp_path / 'bad.json'}' is not valid JSON: ")
    (tmp_path / "none.json").write_text('{"eos_token": 5, "chat_template": [{"name": "default"}]}', encoding="utf-8")
    assert problems("t", {"tokenizer_config": "none.json"}, tmp_path) == [
        ("tokenizer_config", f"'{tmp_path / 'none.json'}': eos_token must be a string or {{'content': string}}"),
        ("tokenizer_config", f"'{tmp_path / 'none.json'}': chat_template[0] must be {{name, template}} strings"),
    ]
    (tmp_path / "empty.json").write_text("{}", encoding="utf-8")
    assert problems("t", {"tokenizer_config": "empty.json"}, tmp_path) == [
        ("tokenizer_config", f"'{tmp_path / 'empty.json'}' has no chat_template")
    ]


def test_build_tries_the_template_on_a_sample_conversation() -> None:
    assert problems("needs-bos", {"jinja": "{{ bos_token + messages[0].content }}"}) == [
        (
            "jinja",
            "fails on a sample conversation: template 'needs-bos' refused the conversation: "
            "UndefinedError: 'bos_token' is undefined",
        )
    ]
    assert problems("g", {"builtin": "gemma", "default_system": "Be nice."}) == [
        ("builtin", "fails on a sample conversation: template 'g' refused the conversation: System role not supported")
    ]
    assert problems("blank", {"jinja": "{% if false %}x{% endif %}"}) == [
        ("jinja", "renders an empty prompt for a sample conversation")
    ]


def test_build_tries_the_tool_use_template(tmp_path: Path) -> None:
    named = [{"name": "default", "template": "ok"}, {"name": "tool_use", "template": "{{ 1 + tools }}"}]
    config = {"chat_template": named}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    [(path, message)] = problems("t", {"tokenizer_config": "tokenizer_config.json"}, tmp_path)
    assert path == "tokenizer_config"
    assert message.startswith("fails on a sample conversation with tools: template 't' failed on the conversation: ")
