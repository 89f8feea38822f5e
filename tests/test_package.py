"""The package's shape: a small public API, cheap imports, modules of one concern."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mooltiproxy

ROOT = Path(__file__).resolve().parent.parent


def test_public_api_is_what_plugin_authors_need() -> None:
    assert sorted(mooltiproxy.__all__) == [
        "BadRequest",
        "ConfigError",
        "Fanout",
        "GatewayError",
        "MappingContext",
        "Prompt",
        "StreamTranslator",
        "Template",
        "UpstreamError",
        "UpstreamStatus",
        "__version__",
    ]
    for name in mooltiproxy.__all__:
        assert hasattr(mooltiproxy, name)


def test_version_matches_the_project_metadata() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{mooltiproxy.__version__}"' in text


def test_importing_the_plugin_api_loads_no_server_stack() -> None:
    code = (
        "import sys, mooltiproxy, mooltiproxy.mappers.openai_tgi_answers, mooltiproxy.prompters;"
        "heavy = {'aiohttp', 'pydantic', 'yaml'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_modules_stay_small() -> None:
    sizes = {p: len(p.read_text().splitlines()) for p in (ROOT / "mooltiproxy").rglob("*.py")}
    sizes.update({p: len(p.read_text().splitlines()) for p in (ROOT / "bench").glob("*.py")})
    too_big = {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > 400}
    assert too_big == {}


def test_the_threat_model_names_tests_that_exist() -> None:
    """Every ``file.py::test_name`` THREAT_MODEL.md gives as a threat's proof is a test of the suite, and every test
    of ``tests/attack`` and ``tests/faults`` proves a threat listed there."""
    import re

    text = (ROOT / "THREAT_MODEL.md").read_text(encoding="utf-8")
    named = re.findall(r"`((?:attack/|faults/)?test_\w+\.py)(?:::(test_\w+))?`", text)
    assert len(named) > 60
    for file, test in named:
        source = (ROOT / "tests" / file).read_text(encoding="utf-8")
        assert test == "" or re.search(rf"^(async )?def {test}\(", source, re.M), f"{file}::{test} does not exist"
    for folder in ("attack", "faults"):
        for path in sorted((ROOT / "tests" / folder).glob("test_*.py")):
            whole = f"`{folder}/{path.name}` (every test)" in text
            for test in re.findall(r"^def (test_\w+)\(", path.read_text(encoding="utf-8"), re.M):
                assert whole or f"{folder}/{path.name}::{test}" in text, f"{folder}/{path.name}::{test} is not listed"
