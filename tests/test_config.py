"""Config loading: the original format loads unchanged; every mistake is reported at once with its YAML path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mooltiproxy.config import build_settings, load_config
from mooltiproxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def problems_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_settings(raw, env if env is not None else {"MOOLTIPROXY_KEY": "k" * 12}, base_dir=DATA, source="t")
    return info.value.problems


def test_the_original_config_template_loads_unchanged() -> None:
    env = {"YOUR_OPENAI_API_KEY_ENVIRONMENT_VARIABLE_NAME": "sk-test"}
    settings = load_config(DATA / "original_config.yaml", env)
    assert settings.default_target == "openai"
    assert set(settings.targets) == {"openai", "runpod1", "target1", "target2"}
    assert settings.targets["openai"].api_key == "sk-test"
    assert settings.targets["runpod1"].preserve_method is True
    chat = settings.targets["runpod1"].routes["/chat/completions"]
    assert chat.upstream_path == "/generate" and chat.prompter is not None and chat.template is None
    assert settings.targets["target1"].routes["/chat/completions"].template is not None
    assert settings.targets["runpod1"].routes["/health"].upstream_path == "/health"
    assert settings.max_tries == 5 and settings.port == 8000 and settings.timeout == 30
    # the master key came from the file: it works, with a warning
    assert settings.key_from_file and settings.master_key == "XXXXXXXXXXXXXXXXXXXXX"
    assert any("MOOLTIPROXY_KEY" in w for w in settings.warnings)


def test_environment_key_wins_over_the_file() -> None:
    env = {"YOUR_OPENAI_API_KEY_ENVIRONMENT_VARIABLE_NAME": "sk", "MOOLTIPROXY_KEY": "from-the-environment"}
    settings = load_config(DATA / "original_config.yaml", env)
    assert settings.master_key == "from-the-environment" and not settings.warnings


def test_the_shipped_template_is_valid() -> None:
    settings = load_config(ROOT / "config.template.yaml", {"OPENAI_API_KEY": "sk-test"})
    assert settings.targets["target2"].options["strict"] is True
    assert settings.targets["runpod1"].routes["/metrics"].methods == frozenset({"GET"})


def test_every_problem_is_reported_together_with_its_path() -> None:
    raw = {
        "system": {"port": "eighty", "colour": "blue"},
        "cerbere": {"whitelist": ["10.0.0.0/33"], "blacklist": ["::1", "not-an-ip"]},
        "targets": {
            "default": "tgi",
            "tgi": {
                "url": "ftp://x",
                "envkey": "MOOLTIPROXY_TEST_UNSET_VAR",
                "mapping": {
                    "/chat/completions": {"path": "/generate", "in": "chatReqOpenAItoTGl", "prompter": "nope"},
                    "/completions": {"out": "no_such_module_xyz:f"},
                    "/x": {"in": "tests.plugins_example:NOT_CALLABLE", "template": "missing"},
                    "/y": {"methods": ["FETCH"]},
                    "nope": None,
                },
            },
        },
        "extra": 1,
    }
    problems = problems_of(raw)
    expected = [
        "extra: unknown section",
        "system.port: Input should be a valid integer",
        "system.colour: unknown key",
        "targets.tgi.url: 'ftp://x' must start with http:// or https://",
        "targets.tgi.envkey: the environment variable 'MOOLTIPROXY_TEST_UNSET_VAR' is not set",
        "targets.tgi.mapping./chat/completions.in: unknown mapper 'chatReqOpenAItoTGl'"
        " (did you mean 'chatReqOpenAItoTGI'?)",
        "targets.tgi.mapping./chat/completions.prompter: unknown prompter 'nope'",
        "targets.tgi.mapping./completions.out: could not import module 'no_such_module_xyz'",
        "targets.tgi.mapping./x.in: mapper 'tests.plugins_example:NOT_CALLABLE' is not callable",
        "targets.tgi.mapping./x.template: unknown template 'missing'",
        "targets.tgi.mapping./y.methods.0: Input should be",
        "targets.tgi.mapping.nope: a mapped path must start with '/'",
        "cerbere.whitelist.0: '10.0.0.0/33' is not an IP address or CIDR range",
        "cerbere.blacklist.1: 'not-an-ip' is not an IP address or CIDR range",
    ]
    for needle in expected:
        assert any(p.startswith(needle) for p in problems), f"{needle!r} not in {problems}"
    assert len(problems) == len(expected)


def test_missing_master_key_default_target_and_sections() -> None:
    problems = problems_of({"targets": {"a": {"url": "http://x", "mapping": {}}}}, env={})
    assert any(p.startswith("system.masterkey: no master key: set the MOOLTIPROXY_KEY") for p in problems)
    assert any(p.startswith("targets.default: required") for p in problems)
    problems = problems_of({"targets": {"default": "b", "a": {"url": "http://x"}}})
    assert "targets.a.mapping: required: the paths this target exposes (or 'api: openai')" in problems
    assert "targets.default: 'b' is not a target (targets: a)" in problems
    assert problems_of(
        {"system": {"masterkey": "short"}, "targets": {"default": "a", "a": {"url": "http://x", "mapping": {}}}}, env={}
    ) == ["system.masterkey: the master key must be 8 characters or more"]


def test_ssl_needs_its_files() -> None:
    raw = {
        "system": {"ssl": True, "certfile": "nope.pem"},
        "targets": {"default": "a", "a": {"url": "http://x", "mapping": {}}},
    }
    problems = problems_of(raw)
    assert any(p.startswith("system.certfile: system.ssl is true but") for p in problems)
    assert any(p.startswith("system.keyfile: system.ssl is true but") for p in problems)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mooltiproxy", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=cwd or ROOT,
        timeout=60,
    )


def test_check_command_lists_every_problem_and_fails(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"targets": {"default": "a", "a": {"url": "nope", "mapping": {"/x": {"in": "idenity"}}}}})
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert "targets.a.url: 'nope' must start with http://" in result.stderr
    assert "targets.a.mapping./x.in: unknown mapper 'idenity' (did you mean 'identity'?)" in result.stderr
    assert "system.masterkey: no master key" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_command_prints_a_summary(tmp_path: Path) -> None:
    result = run_cli("check", "--config", str(ROOT / "config.template.yaml"), env={"OPENAI_API_KEY": "sk"})
    assert result.returncode == 0, result.stderr
    assert "OK, 6 target(s), default 'openai'" in result.stdout
    assert (
        "/chat/completions -> /generate in=chatReqOpenAItoTGI out=chatAnsTGItoOpenAI prompter=llama2_chat"
        in result.stdout
    )
    assert "warning: the master key is read from" in result.stdout


def test_config_path_from_environment_and_yaml_errors(tmp_path: Path) -> None:
    config = tmp_path / "custom.yaml"
    config.write_text("targets: [unclosed")
    result = run_cli("check", env={"MOOLTIPROXY_CONFIG": str(config)})
    assert result.returncode == 3 and "not valid YAML" in result.stderr


def test_a_route_default_system_prompt_reaches_its_template() -> None:
    import asyncio

    raw = {
        "targets": {
            "default": "t",
            "t": {
                "url": "http://x",
                "mapping": {
                    "/role": {"template": "HumanResponse", "default_system": "Route says hi."},
                    "/jinja": {"template": "chatml", "default_system": "Be brief."},
                    "/llama2": {"prompter": "llama2_chat", "default_system": ""},
                },
            },
        },
        "templates": {"HumanResponse": {"user": "\n### HUMAN:\n", "assistant": "\n### RESPONSE:\n"}},
    }
    settings = build_settings(raw, {"MOOLTIPROXY_KEY": "k" * 12}, base_dir=DATA, source="t")
    user = [{"role": "user", "content": "Hi"}]

    def render(path: str) -> str:
        target = settings.targets["t"]
        return asyncio.run(target.routes[path].context(target).render(user)).text

    assert render("/role") == "Route says hi.\n### HUMAN:\nHi\n### RESPONSE:\n"
    assert render("/jinja").startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")
    assert render("/llama2") == "<s>[INST] Hi [/INST]"  # "" means no system prompt at all
    raw["targets"]["t"]["mapping"] = {"/g": {"template": "gemma", "default_system": "No."}}
    problems = problems_of(raw)
    assert problems and problems[0].startswith("targets.t.mapping./g.default_system: template 'gemma' refuses it:")
