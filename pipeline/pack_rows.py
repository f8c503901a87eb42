"""Packed rows and shard files: gather each row's sequences from the memory-mapped spill and
write them as Arrow shards of about `shard_tokens` tokens (pack's local run; pipeline/distributed_write.py
uses the same `row_batches` and `shard_ranges` on a Ray cluster, so the bytes are the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.masking import IGNORE_INDEX
from pipeline.progress import progress_bar
from pipeline.shards import ROW_SCHEMA, shard_name, write_shard


def row_batches(spill: pa.Table, bins: list[list[int]], rows: range, chunk_rows: int = 2048) -> Iterator[pa.RecordBatch]:
    """Gather rows `rows` of `bins` from the spill table, `chunk_rows` rows per record batch."""
    for start in range(rows.start, rows.stop, chunk_rows):
        chosen = bins[start:min(start + chunk_rows, rows.stop)]
        flat = np.fromiter((i for row in chosen for i in row), dtype=np.int64)
        taken = spill.take(pa.array(flat))
        counts = np.fromiter((len(row) for row in chosen), dtype=np.int32, count=len(chosen))
        seq_offsets = np.zeros(len(chosen) + 1, dtype=np.int32)
        np.cumsum(counts, out=seq_offsets[1:])
        ids = taken.column("input_ids").combine_chunks()
        seq_lengths = np.asarray(ids.value_lengths(), dtype=np.int32)
        token_offsets = np.zeros(len(chosen) + 1, dtype=np.int32)
        np.cumsum(np.add.reduceat(seq_lengths, seq_offsets[:-1]), out=token_offsets[1:])
        offsets = pa.array(token_offsets)
        yield pa.RecordBatch.from_arrays(
            [
                pa.ListArray.from_arrays(offsets, ids.flatten()),
                pa.ListArray.from_arrays(offsets, taken.column("labels").combine_chunks().flatten()),
                pa.ListArray.from_arrays(pa.array(seq_offsets), pa.array(seq_lengths)),
                pa.ListArray.from_arrays(pa.array(seq_offsets), taken.column("example_id").combine_chunks()),
            ],
            schema=ROW_SCHEMA,
        )


def shard_ranges(row_tokens: np.ndarray, shard_tokens: int) -> list[range]:
    """Split rows into consecutive shards of about `shard_tokens` tokens (at least one row)."""
    ranges, start, total = [], 0, 0
    for index, tokens in enumerate(row_tokens.tolist()):
        if total and total + tokens > shard_tokens:
            ranges.append(range(start, index))
            start, total = index, 0
        total += tokens
    ranges.append(range(start, len(row_tokens)))
    return ranges


def write_shards(folder: Path, spill_path: Path, bins: list[list[int]], lengths: np.ndarray,
                 shard_tokens: int) -> list[dict[str, Any]]:
    """Write `bins` (rows as spill sequence indices) into `folder` as data-*.arrow shards.

    Args:
        folder: the packed folder being built.
        spill_path: the spill file (encode_all's output); row i of it is sequence i.
        bins: the packed rows.
        lengths: every sequence's length in tokens.
        shard_tokens: tokens per shard, about (a shard holds at least one row).

    Returns:
        One manifest entry per shard: file, sha256, rows, tokens, trained_tokens.
    """
    with pa.memory_map(str(spill_path)) as source:
        spill = pa.ipc.open_file(source).read_all()
        row_tokens = np.fromiter((lengths[row].sum() for row in bins), dtype=np.int64, count=len(bins))
        ranges = shard_ranges(row_tokens, shard_tokens) if bins else [range(0)]
        shards = []
        progress = progress_bar(len(bins), "pack: write")
        for index, rows in enumerate(ranges):
            name = shard_name(index, len(ranges))
            trained = 0

            def counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                nonlocal trained
                for batch in batches:
                    labels = np.asarray(batch.column("labels").flatten())
                    trained += int((labels != IGNORE_INDEX).sum())
                    progress.update(batch.num_rows)
                    yield batch

            sha = write_shard(folder / name, counted(row_batches(spill, bins, rows)))
            shards.append({"file": name, "sha256": sha, "rows": len(rows),
                           "tokens": int(row_tokens[rows.start:rows.stop].sum()), "trained_tokens": trained})
        progress.close()
    return shards
