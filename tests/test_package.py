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
