"""One JSONL line decoded: UTF-8 JSON holding one object and nothing else, or the RowError that
says why not (layer 1 of validate's checks; every reader of JSONL decodes lines here)."""

from __future__ import annotations

import json
import re

import msgspec

from sftpack.errors import json_error_text
from sftpack.records import Record, RowError, shorten


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON (use null or a string)")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# The fast path: msgspec decodes an object line ~1.6x faster than json, to the same value
# (numbers, duplicate keys, escapes: tests/test_schema_fastpath.py). It accepts less (no NaN or
# Infinity, no 1e400, no surrounding whitespace but JSON's), and lines it fails on, or that could
# differ (lone-surrogate escapes; nesting near the recursion limit, where both give up at depths
# that depend on the call stack), go through json, which writes every error.
_FAST_DECODER = msgspec.json.Decoder()
_FAST_MAX_BRACKETS = 500  # fewer [ and { than this: nested far less deeply than either limit


def parse_line(raw: bytes, fast: bool = True) -> tuple[Record | None, list[RowError]]:
    """Decode one line (UTF-8 JSON holding one object and nothing else).

    Args:
        raw: the line's bytes, with or without its line ending.
        fast: try msgspec first. False decodes with json alone (the reference the fast path is
            tested against); the result is the same.

    Returns:
        (the object, []) or (None, [one error]) with rule invalid_utf8, invalid_json,
        not_object, trailing_garbage or lone_surrogate.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, [RowError("", "invalid_utf8", f"byte {raw[err.start]:#04x} at byte offset {err.start} is not "
                                                     "UTF-8; re-encode the file as UTF-8")]
    if fast and raw.count(b"[") + raw.count(b"{") < _FAST_MAX_BRACKETS and not _SURROGATE_ESCAPE.search(text):
        try:
            value = _FAST_DECODER.decode(raw)
        except msgspec.DecodeError:  # also its ValidationError (numbers out of range)
            value = None
        if type(value) is dict:
            return value, []
    text = text.strip()
    if text.startswith("\ufeff"):
        return None, [RowError("", "invalid_json", "line starts with a byte-order mark; save the file as UTF-8 "
                                                    "without BOM")]
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as err:
        return None, [RowError("", "invalid_json", json_error_text(err))]
    except (ValueError, RecursionError) as err:
        return None, [RowError("", "invalid_json", str(err) or "nested too deeply")]
    if text[end:].strip():
        return None, [RowError("", "trailing_garbage", f"text after the JSON value at column {end + 1}: "
                                                        f"{shorten(text[end:].strip())!r}; one object per line")]
    if not isinstance(value, dict):
        return None, [RowError("", "not_object", f"the line is a JSON {type(value).__name__}, expected an object "
                                                  "with a `messages` list")]
    if _SURROGATE_ESCAPE.search(text):  # rare: only then pay for the full check
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            return None, [RowError("", "lone_surrogate", f"a \\u{ord(err.object[err.start]):04x} escape is half of a "
                                                          "UTF-16 surrogate pair; such text cannot be tokenized; fix "
                                                          "the escape or remove it")]
    return value, []


