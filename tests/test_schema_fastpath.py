"""The fast paths of parse_line and schema_errors give exactly what json and jsonschema give.

schema_errors first checks a record against msgspec types translated from
schemas/messages.schema.json; only a record they reject goes to jsonschema. So the one thing
that can go wrong is the fast path accepting a record jsonschema rejects: these tests run
generated records (shaped by the schema file, with wrong types, missing keys and near-miss
values mixed in), every line of tests/fixtures/validate/mixed.jsonl and of the real data
through both and compare verdicts and error lists. parse_line likewise: msgspec's decoding must
give the same value as json's, or leave the line to json.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jsonschema
import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sftpack.checks.schema import msgspec_type, schema_fast_type, schema_validator
from sftpack.checks.messages import schema_errors
from sftpack.io.lines import parse_line

from conftest import REAL_DATA

REPO = Path(__file__).resolve().parent.parent
MIXED = REPO / "tests" / "fixtures" / "validate" / "mixed.jsonl"

FUZZ = settings(max_examples=600, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6))
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
EXTRA_KEYS = ["meta", "weight", "", "~/"]  # keys no schema object lists: metadata, allowed


def _near_misses(value: str) -> list[str]:
    return [value.upper(), value + " ", value[:-1], " " + value]


def shaped(node: object) -> st.SearchStrategy:
    """Values for schema `node`: mostly its shape; 1 in 20 any JSON value instead."""
    if not isinstance(node, dict):
        return JSON_ANY
    options = []
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        misses = [m for v in values if isinstance(v, str) for m in _near_misses(v)]
        options.append(_mostly(st.sampled_from(values), st.sampled_from(misses)) if misses else st.sampled_from(values))
    types = node.get("type", [])
    for name in [types] if isinstance(types, str) else types:
        if name == "string":
            low = node.get("minLength", 0)
            options.append(_mostly(st.text(min_size=low, max_size=low + 4), st.text(max_size=max(low - 1, 0))))
        elif name == "integer":
            options += [st.integers(-2**70, 2**70), st.integers(-3, 3).map(float)]  # 1.0 is an integer to jsonschema
        elif name == "number":
            options += [st.floats(), st.integers()]
        elif name == "boolean":
            options.append(st.booleans())
        elif name == "null":
            options.append(st.none())
        elif name == "array":
            low, items = node.get("minItems", 0), shaped(node.get("items", {}))
            options.append(_mostly(st.lists(items, min_size=low, max_size=low + 3), st.lists(items, max_size=max(low - 1, 0))))
        elif name == "object":
            options.append(_objects(node))
    return _mostly(st.one_of(options), JSON_ANY) if options else JSON_ANY


def _mostly(usual: st.SearchStrategy, rare: st.SearchStrategy, one_in: int = 20) -> st.SearchStrategy:
    # sampled_from over a list, as one_of may merge repeated branches and then picks evenly
    return st.sampled_from([True] * (one_in - 1) + [False]).flatmap(lambda ok: usual if ok else rare)


def _objects(node: dict) -> st.SearchStrategy:
    properties, required = node.get("properties", {}), node.get("required", [])
    keys = st.fixed_dictionaries({k: shaped(properties.get(k, {})) for k in required},
                                 optional={k: shaped(v) for k, v in properties.items() if k not in required})
    extra = st.dictionaries(st.sampled_from(EXTRA_KEYS), JSON_ANY, max_size=2)
    dropped = _mostly(st.just(set()), st.sampled_from(required).map(lambda key: {key})) if required else st.just(set())
    return st.tuples(extra, keys, dropped).map(lambda t: {**t[0], **{k: v for k, v in t[1].items() if k not in t[2]}})


SCHEMA = schema_validator().schema  # the schema file, $refs inlined: the generator follows its edits


def fast_accepts(record: object) -> bool:
    try:
        msgspec.convert(record, schema_fast_type())
    except Exception:  # noqa: BLE001 - anything but acceptance
        return False
    return True


def same_parse(raw: bytes) -> None:
    (fast_value, fast_errors), (value, errors) = parse_line(raw), parse_line(raw, fast=False)
    assert repr(fast_value) == repr(value)  # repr: 1 vs 1.0, -0.0 vs 0.0, key order
    assert fast_errors == errors


# ---------------------------------------------------------------- schema_errors


def test_the_schema_file_has_a_fast_path():
    assert schema_fast_type() is not None, (
        "schemas/messages.schema.json uses a keyword pipeline/checks/schema.py:_fast_type does not translate, so every "
        "row goes through jsonschema (~7x slower validate); teach _fast_type the keyword or keep the schema to "
        "type/enum/const/properties/required/items/minLength/maxLength/minItems/maxItems")


@FUZZ
@given(record=shaped(SCHEMA), ascii_only=st.booleans(), compact=st.booleans(),
       lead=st.sampled_from(["", " ", "\t", "\ufeff", "\xa0"]),
       tail=st.sampled_from(["", "\n", "\r\n", " \n", "\x0c\n", " x", "}", " {}"]))
def test_generated_records_get_the_reference_verdicts_and_errors(record, ascii_only, compact, lead, tail):
    expected = schema_errors(record, fast=False)
    accepted = fast_accepts(record)
    event(f"fast path accepts: {accepted}; jsonschema errors: {bool(expected)}")
    if accepted:
        assert expected == [], "the fast path accepted a record jsonschema rejects"
    assert schema_errors(record) == expected
    # and as a line of text, however spaced, padded or followed
    text = json.dumps(record, ensure_ascii=ascii_only, separators=(",", ":") if compact else None)
    same_parse((lead + text + tail).encode("utf-8"))


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines(keepends=True) if line.strip()]


def test_mixed_fixture_lines_same_as_reference():
    for raw in _lines(MIXED):
        same_parse(raw)
        record, _ = parse_line(raw)
        if record is not None:
            assert schema_errors(record) == schema_errors(record, fast=False), raw


@pytest.mark.parametrize("name", ["alpaca_en_demo", "fastchat_dummy_conversation", "glaive_toolcall_en_demo"])
def test_real_lines_take_the_fast_paths(name):
    for raw in gzip.decompress((REAL_DATA / f"{name}.jsonl.gz").read_bytes()).splitlines(keepends=True):
        same_parse(raw)
        record = msgspec.json.decode(raw)  # parse_line's fast path decodes every real line
        assert fast_accepts(record), raw[:200]
        assert schema_errors(record, fast=False) == []


# ---------------------------------------------------------------- the translation, on other schemas

TYPES = ["string", "integer", "number", "boolean", "null", "array", "object"]


def _schemas(depth: int = 2) -> st.SearchStrategy:
    """Schemas made of the keywords the translation knows, with now and then one it does not."""
    inner = _schemas(depth - 1) if depth else st.just({"type": "string"})
    words = st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(TYPES) | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True),
        "minLength": st.integers(0, 3), "maxLength": st.integers(0, 3),
        "minItems": st.integers(0, 2), "maxItems": st.integers(0, 3), "items": inner,
        "properties": st.dictionaries(st.sampled_from(["a", "b", "type"]), inner, max_size=2),
        "required": st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=2),
        "description": st.just("annotation"),
    })
    special = st.one_of(
        st.lists(st.sampled_from(["x", "y", "X"]), min_size=1, max_size=2, unique=True).map(lambda v: {"enum": v}),
        st.sampled_from(["x", 1, None]).map(lambda v: {"const": v}),
        st.sampled_from([{"pattern": "^x"}, {"minimum": 1}, {"additionalProperties": False}, {"enum": [1, "x"]},
                         {"type": "string", "format": "date"}, {"uniqueItems": True}]),
    )
    return st.one_of(words, words, words, special)


@FUZZ
@given(schema=_schemas(), data=st.data())
def test_translation_never_accepts_more_than_the_schema(schema, data):
    fast = msgspec_type(schema)
    event(f"translated: {fast is not None}")
    if fast is None:
        return
    validator = jsonschema.Draft202012Validator(schema)
    for value in (data.draw(shaped(schema)), data.draw(JSON_ANY)):
        try:
            msgspec.convert(value, fast)
        except msgspec.ValidationError:
            continue
        assert validator.is_valid(value), f"msgspec accepts {value!r} against {schema}"


def test_unknown_keywords_turn_the_fast_path_off():
    for schema in ({"type": "string", "pattern": "^a"}, {"type": "object", "additionalProperties": False},
                   {"minLength": 1}, {"enum": [1, 2]}, {"type": "integer", "enum": ["a"]}, {"const": None},
                   {"type": ["object", "object"], "properties": {"a": {}}}, {"allOf": [{"type": "string"}]}):
        assert msgspec_type(schema) is None, schema
    assert msgspec_type({"type": "string", "description": "annotations are fine"}) is str


# ---------------------------------------------------------------- parse_line


@pytest.mark.parametrize("literal", [
    "1", "-0", "-0.0", "1.0", "1E5", "1e-7", "0.1e-400", "1e400", "-1e400", "NaN", "Infinity", "-Infinity",
    "123456789012345678901234567890.5", "1180591620717411303424", "9" * 4300, "9" * 4301, "01", "1.", ".5",
    '"\\ud800"', '"\\ud83d\\ude00"', '"\\udc00\\ud800"', '"\\u0000"', '"a\x01b"', '"tab\there"', '"\\/\\b\\f"',
    '"caf\xc3\xa9"', "true", "null", "[1,2,]", '{"a":1,"a":2}', '{"b":1,"a":2,"b":3}',
])
def test_literals_decode_as_json_does(literal):
    same_parse(b'{"messages": [], "v": ' + literal.encode("latin-1") + b"}\n")


@pytest.mark.parametrize("depth", [1, 100, 480, 497, 498, 499, 500, 800, 990, 1000, 5000])
def test_deep_nesting_decodes_as_json_does(depth):
    same_parse(b'{"v": ' + b"[" * depth + b"]" * depth + b"}")
    same_parse(b'{"v": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}")


def test_non_objects_and_bad_bytes_decode_as_json_does():
    for raw in [b"[]", b'"text"', b"1", b"null", b"", b"\xff{}", b'{"a": "\xe9"}', b"\xef\xbb\xbf{}", b"{} {}"]:
        same_parse(raw)
