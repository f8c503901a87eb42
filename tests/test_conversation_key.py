"""conversation_key (msgspec where it is exact) gives the bytes of its json.dumps definition."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftpack.checks.conversation_key import conversation_key
from sftpack.io.lines import parse_line

from conftest import REAL_DATA


# Floats where msgspec and json.dumps write different text, and neighbours where they agree.
FLOATS = [1e16, 1e15, 9999999999999998.0, 1e-4, 1e-5, 0.0001234, 0.00001234, 123456789012345680.0, 1.5, -0.0, 0.0,
          5e-324, 1.7976931348623157e308, float("nan"), float("inf"), float("-inf"), 2.5e-7, 1e22]
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**80, 2**80), st.floats(), st.sampled_from(FLOATS),
              st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=12)},
                                optional={"tool_calls": JSON, "meta": JSON})
RECORD = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=3)},
                               optional={"tools": st.one_of(st.none(), st.just([]), JSON), "id": JSON})


def reference(record: dict) -> bytes:
    return json.dumps([record["messages"], record.get("tools") or None], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


@settings(max_examples=800, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=RECORD)
def test_generated_records_give_the_json_dumps_bytes(record):
    assert conversation_key(record) == reference(record)


@pytest.mark.parametrize("value", FLOATS + [2**70, -(2**64), "".join(map(chr, range(0x20))) + '"\\\x7f\u2028\U0001f600'])
def test_awkward_values_give_the_json_dumps_bytes(value):
    record = {"messages": [{"role": "user", "content": "hi", "x": value}], "tools": [{"p": {"default": value}}]}
    assert conversation_key(record) == reference(record)


def test_every_code_point_and_key_order():
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    keys = {chr(c): c for c in (0x10000, 0xFFFF, 0xE9, 0x41, 0x1F600, 0xFF61, 0x7F, 0x20)}
    record = {"messages": [{"content": text, **keys}]}
    assert conversation_key(record) == reference(record)


def test_lone_surrogate_raises_as_before():
    with pytest.raises(UnicodeEncodeError):
        conversation_key({"messages": [{"content": "\ud800"}]})


@pytest.mark.parametrize("name", ["alpaca_en_demo", "fastchat_dummy_conversation", "glaive_toolcall_en_demo"])
def test_real_lines_give_the_json_dumps_bytes(name):
    for raw in gzip.decompress((REAL_DATA / f"{name}.jsonl.gz").read_bytes()).splitlines():
        record, errors = parse_line(raw)
        assert not errors
        assert conversation_key(record) == reference(record)
