"""schemas/messages.schema.json in Python: the jsonschema validator and its msgspec fast path.

jsonschema is the authority and writes every error message, but it walks the schema in Python
for every row (~4k rows/s on chat data). The fast path: msgspec types translated from the same
schema file, which check a row in C (~400k rows/s) and accept a subset of what the schema
accepts. A row they accept has no schema errors; any other row goes to jsonschema, so verdicts
and errors are exactly jsonschema's (tests/test_schema_fastpath.py). A keyword the translation
does not know turns the fast path off: every row through jsonschema, correct and slower.

messages.schema_errors uses both.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import msgspec

if TYPE_CHECKING:
    import jsonschema

SCHEMA_PATH = files("sftpack.schemas") / "messages.schema.json"  # schemas/ in the repo, sftpack/schemas/ installed


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    # Local "#/$defs/x" references replaced by their target: same verdicts and error paths,
    # about a third faster, since jsonschema resolves every $ref on every row.
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].removeprefix("#/$defs/")], defs)
        return {key: _inline_refs(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(value, defs) for value in node]
    return node


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    """`schemas/messages.schema.json`, checked, its local $refs inlined (read once)."""
    import jsonschema  # ~0.1 s; imported when the first record is checked, not at start-up

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return _inline_refs(schema, schema.get("$defs", {}))


@lru_cache(maxsize=1)
def schema_validator() -> jsonschema.Draft202012Validator:
    """The validator for `schemas/messages.schema.json` (loaded and checked once)."""
    import jsonschema

    return jsonschema.Draft202012Validator(_schema())


_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples", "default",
                          "deprecated", "readOnly", "writeOnly"})
_STRING_LIMITS = {"minLength": "min_length", "maxLength": "max_length"}  # both count code points
_ARRAY_LIMITS = {"minItems": "min_length", "maxItems": "max_length"}
_TRANSLATED = frozenset({"type", "enum", "const", "properties", "required", "items", *_STRING_LIMITS, *_ARRAY_LIMITS})


class _Untranslatable(Exception):
    """A schema construct with no msgspec type that accepts the same values or fewer."""


def _limited(kind: Any, node: dict[str, Any], limits: dict[str, str]) -> Any:
    meta = {limits[key]: node[key] for key in limits if key in node}
    return Annotated[kind, msgspec.Meta(**meta)] if meta else kind


def _fast_struct(node: dict[str, Any]) -> Any:
    # Fields are f0, f1, ... renamed to the keys, so any key works; unknown keys are ignored,
    # as the schema (no additionalProperties) allows them.
    properties, required = node.get("properties", {}), node.get("required", [])
    fields, rename = [], {}
    for i, key in enumerate(dict.fromkeys([*properties, *required])):
        kind = _fast_type(properties.get(key, True))
        fields.append((f"f{i}", kind) if key in required else (f"f{i}", Union[kind, msgspec.UnsetType], msgspec.UNSET))
        rename[f"f{i}"] = key
    return msgspec.defstruct("SchemaObject", fields, rename=rename, kw_only=True)


def _fast_type(node: Any) -> Any:
    """The msgspec type for one (inlined) schema node; raises _Untranslatable."""
    if node is True:
        return Any
    if not isinstance(node, dict):
        raise _Untranslatable(f"schema {node!r}")
    keywords = node.keys() - _ANNOTATIONS
    if keywords - _TRANSLATED:
        raise _Untranslatable(f"keywords {sorted(keywords - _TRANSLATED)}")
    types = node.get("type")
    types = [types] if isinstance(types, str) else types
    if "enum" in node or "const" in node:  # string values only: Literal is exact for them
        values = node["enum"] if "enum" in node else [node["const"]]
        if (keywords - {"type", "enum", "const"} or {"enum", "const"} <= keywords or not values
                or not all(isinstance(value, str) for value in values) or "string" not in (types or ["string"])):
            raise _Untranslatable(f"enum/const {node!r}")
        return Literal[tuple(values)]
    if types is None:  # type-specific keywords without `type` apply to some types only
        if keywords:
            raise _Untranslatable(f"keywords {sorted(keywords)} without `type`")
        return Any
    members = []
    for name in types:
        if name == "string":
            members.append(_limited(str, node, _STRING_LIMITS))
        elif name == "array":
            members.append(_limited(list[_fast_type(node.get("items", True))], node, _ARRAY_LIMITS))
        elif name == "object":
            members.append(_fast_struct(node) if {"properties", "required"} & keywords else dict)
        else:  # msgspec's int takes neither bools nor 1.0 (stricter); its float takes ints, not bools
            members.append({"integer": int, "number": float, "boolean": bool, "null": None}[name])
    return Union[tuple(members)] if len(members) > 1 else members[0]


def msgspec_type(schema: Any) -> Any:
    """A msgspec type that accepts a subset of what a JSON Schema accepts.

    Args:
        schema: a schema with its $refs inlined.

    Returns:
        The type, or None where the schema has a keyword this translation does not know, or a
        construct msgspec cannot express (two object types in one union).
    """
    try:
        fast = _fast_type(schema)
        msgspec.inspect.type_info(fast)  # msgspec's own limits, checked over the whole type
    except (_Untranslatable, TypeError):
        return None
    return fast


@lru_cache(maxsize=1)
def schema_fast_type() -> Any:
    """`msgspec_type` of `schemas/messages.schema.json`: the fast path; None sends every row to jsonschema."""
    return msgspec_type(_schema())
