"""Grammar checks of TGI's validation (rules 18–21). Pure code.

A ``json``/``json_object`` grammar must be a JSON object or a string holding JSON; the schema must pass the
JSON Schema (draft 2020-12) meta-schema — a practical subset is checked here — and have top-level
``properties``. ``json_schema`` checks ``value.schema`` the same way. A ``regex`` grammar must compile.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .wire import JsonFail, Reader

__all__ = ["grammar_problem"]

_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})
_SUBSCHEMA = (
    "additionalProperties",
    "contains",
    "else",
    "if",
    "items",
    "not",
    "propertyNames",
    "then",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_SCHEMA_MAPS = ("$defs", "definitions", "dependentSchemas", "patternProperties", "properties")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_NUMBERS = ("exclusiveMaximum", "exclusiveMinimum", "maximum", "minimum", "multipleOf")
_COUNTS = ("maxContains", "maxItems", "maxLength", "maxProperties", "minContains", "minItems", "minLength")
_COUNTS_2 = ("minProperties",)
_STRINGS = ("$anchor", "$comment", "$id", "$ref", "$schema", "description", "format", "pattern", "title")


def _show(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, float) or value == value else "NaN"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _meta_problem(schema: Any) -> str | None:
    """The first reason ``schema`` is not a valid JSON Schema, worded like the jsonschema crate."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f'{_show(schema)} is not of types "boolean", "object"'
    if "type" in schema:
        kind = schema["type"]
        kinds = kind if isinstance(kind, list) else [kind]
        valid = bool(kinds) and all(isinstance(k, str) and k in _TYPES for k in kinds)
        if not valid or len(set(kinds)) != len(kinds):
            return f"{_show(kind)} is not valid under any of the schemas listed in the 'anyOf' keyword"
    for key in _SUBSCHEMA:
        if key in schema and (problem := _meta_problem(schema[key])):
            return problem
    for key in _SCHEMA_MAPS:
        if key in schema:
            value = schema[key]
            if not isinstance(value, dict):
                return f'{_show(value)} is not of type "object"'
            for sub in value.values():
                if problem := _meta_problem(sub):
                    return problem
    for key in _SCHEMA_LISTS:
        if key in schema:
            value = schema[key]
            if not isinstance(value, list):
                return f'{_show(value)} is not of type "array"'
            if not value:
                return "[] has less than 1 item"
            for sub in value:
                if problem := _meta_problem(sub):
                    return problem
    for key in _NUMBERS:
        if key in schema and not _is_number(schema[key]):
            return f'{_show(schema[key])} is not of type "number"'
    for key in (*_COUNTS, *_COUNTS_2):
        value = schema.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            return f'{_show(value)} is not of type "integer"'
        if value < 0:
            return f"{_show(value)} is less than the minimum of 0"
    for key in _STRINGS:
        if key in schema and not isinstance(schema[key], str):
            return f'{_show(schema[key])} is not of type "string"'
    if "required" in schema:
        required = schema["required"]
        if not isinstance(required, list):
            return f'{_show(required)} is not of type "array"'
        for item in required:
            if not isinstance(item, str):
                return f'{_show(item)} is not of type "string"'
        if len(set(required)) != len(required):
            return f"{_show(required)} has non-unique elements"
    if "enum" in schema and not isinstance(schema["enum"], list):
        return f'{_show(schema["enum"])} is not of type "array"'
    return None


def _refs(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["$ref"]] if isinstance(schema.get("$ref"), str) else []
        for value in schema.values():
            found.extend(_refs(value))
        return found
    if isinstance(schema, list):
        return [ref for item in schema for ref in _refs(item)]
    return []


def _resolves(root: Any, ref: str) -> bool:
    if not ref.startswith("#"):
        return False
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _schema_problem(schema: Any) -> tuple[int, str] | None:
    if problem := _meta_problem(schema):
        return 19, f"grammar is not valid: {problem}"
    if not isinstance(schema, dict) or "properties" not in schema:
        return 20, "grammar is not valid: Grammar must have a 'properties' field"
    for ref in _refs(schema):
        if not _resolves(schema, ref):
            return 21, f"cannot compile regex from schema: Invalid reference path: {ref}"
    return None


def grammar_problem(grammar: dict[str, Any], *, disabled: bool) -> tuple[int, str] | None:
    """``(rule, message)`` for the first grammar rule that fails, or None."""
    if disabled:
        return 18, "grammar is not supported"
    kind, value = grammar.get("type"), grammar.get("value")
    if kind == "regex":
        try:
            re.compile(value if isinstance(value, str) else "")
        except re.error as exc:
            return 19, f"grammar is not valid: {exc}"
        return None
    if kind == "json_schema":
        schema = value.get("schema") if isinstance(value, dict) else None
        return _schema_problem(schema)
    if isinstance(value, str):
        reader = Reader(value.encode("utf-8", "surrogatepass"))
        try:
            value = reader.value()
            reader.end()
        except JsonFail as exc:
            return 19, f"grammar is not valid: {exc.render(reader.buf, with_path=False)}"
    elif not isinstance(value, dict):
        return 18, "grammar is not supported"
    return _schema_problem(value)
