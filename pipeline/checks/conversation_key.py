"""Which conversations are the same: canonical bytes of a record's messages and tools, and their hash
(validate's and report's duplicate check)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec

Record = dict[str, Any]


_SORTED_JSON = msgspec.json.Encoder(order="sorted")


def _float_found(text: str) -> float:
    raise ValueError("float")


_FLOAT_FINDER = msgspec.json.Decoder(float_hook=_float_found)


def _sorted_json(value: Any) -> bytes | None:
    """`json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))` in UTF-8,
    written by msgspec (about 8x faster), or None where the two might differ.

    They differ only in floats (1e+16 / 1e16, 1e-05 / 0.00001; NaN and infinities msgspec writes
    as null), so a value holding any float or null goes to json.dumps: floats are found by
    decoding msgspec's output again with a float_hook that raises on the first one.
    """
    try:
        out = _SORTED_JSON.encode(value)
    except (msgspec.EncodeError, TypeError, ValueError, RecursionError):  # e.g. a lone surrogate
        return None
    if b"null" in out:
        return None
    try:
        _FLOAT_FINDER.decode(out)
    except (msgspec.DecodeError, ValueError):
        return None
    return out


def conversation_key(record: Record) -> bytes:
    """Canonical bytes of a record's messages and tools: equal for exact duplicate conversations.

    Always the bytes of `json.dumps([messages, tools or None], sort_keys=True, ensure_ascii=False,
    separators=(",", ":"))`, for a record of JSON types (a parsed line); tests/test_conversation_key.py.
    """
    messages, tools = record["messages"], record.get("tools") or None
    fast = _sorted_json(messages), b"null" if tools is None else _sorted_json(tools)
    if None not in fast:
        return b"[%s,%s]" % fast
    return json.dumps([messages, tools], sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def conversation_hash(record: Record) -> int:
    """8-byte signed hash of `conversation_key` (fits an Int64 column; collisions ~n^2/2^65)."""
    return int.from_bytes(hashlib.blake2b(conversation_key(record), digest_size=8).digest(), signed=True)
