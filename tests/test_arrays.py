"""pipeline/store/arrays.py: arrays made through buffers equal the ones pyarrow's constructors make."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sftpack.packing.encode import STATS_SCHEMA
from sftpack.store.arrays import as_numpy, list_array, numbers, table_from_rows


def test_a_stats_table_equals_from_pylist_nulls_and_unicode_included():
    rows = [{"example_id": "a:1", "source": "s", "input": "in.jsonl", "line": 1, "turns": 2, "sequences": 1,
             "tokens": 30, "trained_tokens": 12, "truncated": False, "dropped": None},
            {"example_id": "é🙂:2", "source": None, "input": "in.jsonl", "line": 2**40, "turns": 0, "sequences": 0,
             "tokens": 0, "trained_tokens": 0, "truncated": True, "dropped": "too_long"},
            {"example_id": "", "input": "中文", "line": 3, "turns": None, "truncated": None}]  # keys missing: null
    for chosen in (rows, rows[:1], rows * 5, []):
        built = table_from_rows(chosen, STATS_SCHEMA)
        built.validate(full=True)
        assert built.equals(pa.Table.from_pylist(chosen, schema=STATS_SCHEMA))


def test_numbers_lists_and_numpy_views_equal_pyarrows():
    values = np.arange(-3, 7, dtype=np.int32)
    assert numbers(values).equals(pa.array(values)) and numbers(values.astype(np.int64)).equals(pa.array(values, pa.int64()))
    offsets = np.array([0, 2, 2, 10], dtype=np.int32)
    listed = list_array(offsets, numbers(values))
    assert listed.equals(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))
    sliced = listed.slice(1)  # an offset into the buffers
    assert as_numpy(sliced.value_lengths()).tolist() == [0, 8]
    assert as_numpy(sliced.flatten()).tolist() == values[2:].tolist()
    chunked = pa.chunked_array([pa.array([1, 2], pa.int64()), pa.array([3], pa.int64())])
    assert as_numpy(chunked).tolist() == [1, 2, 3]
    with_null = pa.array([1, None], pa.int32())
    assert np.isnan(as_numpy(with_null)[1])  # nulls take pyarrow's own path
