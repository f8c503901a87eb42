"""Arrow arrays to and from numpy through their buffers, for the stages that read and write shards.

Each pyarrow constructor that takes Python or numpy values (`pa.array`, `Table.from_pylist`,
`pa.scalar`, a numpy array given to `take`), and `Array.to_numpy`, import pandas the first time
they run (to ask whether a value is a pandas object): 0.3 s of a pack that never uses pandas.
`pa.Array.from_buffers` and `np.frombuffer` ask nothing, so the arrays here go through buffers;
they equal what `pa.array` and `to_numpy` give (tests/test_arrays.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa


_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64}


def as_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`np.asarray(array)`, zero-copy (read-only) for a null-free int32/int64 array: `Array.to_numpy`
    imports pandas. Anything else (nulls, other types) takes that ordinary path."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    dtype = _NUMPY_TYPES.get(array.type)
    if dtype is None or array.null_count:
        return np.asarray(array)
    dtype = np.dtype(dtype)
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _validity(missing: np.ndarray) -> pa.Buffer | None:
    return pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None


def numbers(values: np.ndarray | Sequence[int | float], dtype: Any = None) -> pa.Array:
    """A primitive array (int32, int64, float64, ...) of `values`, which hold no None."""
    data = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(pa.from_numpy_dtype(data.dtype), data.size, [None, pa.py_buffer(data)])


def list_array(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    """`pa.ListArray.from_arrays` with numpy int32 offsets."""
    return pa.ListArray.from_arrays(numbers(offsets, np.int32), values)


def strings(values: Sequence[str | None]) -> pa.Array:
    """A utf-8 string array; None is null."""
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [_validity(missing), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def column(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    """`values` (None is null) as an array of type `kind`: string, bool or a fixed-width number."""
    if pa.types.is_string(kind):
        return strings(values)
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    if pa.types.is_boolean(kind):
        bits = np.packbits(np.fromiter((bool(v) for v in values), dtype=bool, count=len(values)), bitorder="little")
        return pa.Array.from_buffers(kind, len(values), [_validity(missing), pa.py_buffer(bits)])
    data = np.fromiter((0 if v is None else v for v in values), dtype=kind.to_pandas_dtype(), count=len(values))
    return pa.Array.from_buffers(kind, len(values), [_validity(missing), pa.py_buffer(data)])


def table_from_rows(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """`pa.Table.from_pylist(rows, schema=schema)` for string, bool and number columns (a missing key is null)."""
    return pa.Table.from_arrays([column([row.get(field.name) for row in rows], field.type) for field in schema],
                                schema=schema)
