"""Built-in mapper and prompter names, and the import of user plug-ins by dotted path.

A config value is either a built-in name (the original gateway's spellings) or ``package.module:attribute``
naming an importable object. Nothing else is ever loaded: no files, no URLs. Names are resolved once, when the
config is loaded.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

__all__ = ["MAPPERS", "PROMPTERS", "ImportFromStringError", "import_from_string", "resolve"]

MAPPERS: dict[str, str] = {
    "identity": "mooltiproxy.mappers.identity:identity",
    "textReqOpenAItoTGI": "mooltiproxy.mappers.openai_tgi:text_request",
    "chatReqOpenAItoTGI": "mooltiproxy.mappers.openai_tgi:chat_request",
    "textAnsTGItoOpenAI": "mooltiproxy.mappers.openai_tgi_answers:text_answer",
    "chatAnsTGItoOpenAI": "mooltiproxy.mappers.openai_tgi_answers:chat_answer",
    "messagesReqAnthropicToOpenAI": "mooltiproxy.mappers.anthropic_openai:messages_request",
    "messagesAnsOpenAItoAnthropic": "mooltiproxy.mappers.anthropic_openai:messages_answer",
    "messagesReqAnthropicToTGI": "mooltiproxy.mappers.anthropic_tgi:messages_request",
    "messagesAnsTGItoAnthropic": "mooltiproxy.mappers.anthropic_tgi:messages_answer",
    "countTokensReqAnthropicToTGI": "mooltiproxy.mappers.anthropic_tgi:count_tokens_request",
    "countTokensAnsTGItoAnthropic": "mooltiproxy.mappers.anthropic_tgi:count_tokens_answer",
}

PROMPTERS: dict[str, str] = {
    "fromTemplate": "mooltiproxy.prompters:from_template",
    "chatTemplate": "mooltiproxy.prompters:from_template",
    "llama2_chat": "mooltiproxy.prompters:llama2_chat",
}


class ImportFromStringError(ValueError):
    pass


def import_from_string(import_str: str) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted)."""
    module_str, _, attrs_str = import_str.partition(":")
    if not module_str or not attrs_str:
        raise ImportFromStringError(f"'{import_str}' must be a built-in name or in the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_str)
    except ModuleNotFoundError as exc:
        if exc.name != module_str and not module_str.startswith(f"{exc.name}."):
            raise ImportFromStringError(f"could not import module '{module_str}': {exc}") from exc
        raise ImportFromStringError(f"could not import module '{module_str}'") from exc
    except Exception as exc:  # the user's module raised while importing: report it, do not crash the loader
        raise ImportFromStringError(f"importing module '{module_str}' failed: {type(exc).__name__}: {exc}") from exc
    instance: Any = module
    try:
        for attr in attrs_str.split("."):
            instance = getattr(instance, attr)
    except AttributeError as exc:
        raise ImportFromStringError(f"attribute '{attrs_str}' not found in module '{module_str}'") from exc
    return instance


def resolve(name: str, table: dict[str, str], kind: str) -> Any:
    """Resolve a built-in ``name`` from ``table``, or a dotted path; ``ImportFromStringError`` says why not."""
    target = table.get(name)
    if target is None:
        if ":" not in name:
            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(table))
            raise ImportFromStringError(f"unknown {kind} '{name}'{hint}; built-ins: {known}; or 'package.module:name'")
        target = name
    obj = import_from_string(target)
    if not callable(obj):
        raise ImportFromStringError(f"{kind} '{name}' is not callable")
    return obj
