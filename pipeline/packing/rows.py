"""Packed rows from the spills: each row's sequences gathered in row order (`gathered_batches`), and
rows cut into shards of about `shard_tokens` tokens (`shard_ranges`); packing/steps.py writes them.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sftpack.templates.masking import IGNORE_INDEX
from sftpack.progress import progress_bar
from sftpack.store.arrays import as_numpy, list_array, numbers
from sftpack.store.shards import ROW_SCHEMA, shard_name, write_shard


GATHER_FILES = 256
"""Output chunks whose sequences one pass over the spill sorts into files (open files at once)."""


def row_chunks(rows: range, chunk_rows: int = 2048) -> list[range]:
    """`rows` cut into consecutive ranges of `chunk_rows` rows: one record batch each."""
    return [range(start, min(start + chunk_rows, rows.stop)) for start in range(rows.start, rows.stop, chunk_rows)]


def _spill_batches(spill_paths: list[Path]) -> Iterator[pa.RecordBatch]:
    # Read, not memory-mapped: mapped pages count as this process's memory until unmapped, and
    # rows gather sequences from all over the spill, so a mapping would hold all of it.
    for path in spill_paths:
        with pa.OSFile(str(path)) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)


def gathered_batches(spill_paths: list[Path], bins: list[list[int]], chunks: list[range],
                     scratch: Path) -> Iterator[pa.RecordBatch]:
    """One ROW_SCHEMA record batch per range of `chunks` (consecutive rows of `bins`, in order).

    Rows take sequences from anywhere in the spill (best-fit-decreasing mixes long and short), so
    the sequences are sorted out first: one pass over the spill, a batch at a time, appends each
    sequence to its chunk's file in `scratch` (at most GATHER_FILES chunks per pass); then each
    chunk's file is read and put in row order. Memory stays one spill batch or one chunk,
    whatever the spill's size; the spill is read once per GATHER_FILES chunks.

    Args:
        spill_paths: the spill files in order; their rows, concatenated, are sequences 0, 1, ...
        bins: rows as sequence indices.
        chunks: consecutive ranges of rows of `bins`, each non-empty.
        scratch: a folder for the chunk files (created; each file is removed once read, the
            folder is the caller's to remove).
    """
    counts = [sum(len(row) for row in bins[chunk.start:chunk.stop]) for chunk in chunks]
    sequences = np.fromiter((i for chunk in chunks for row in bins[chunk.start:chunk.stop] for i in row),
                            dtype=np.int64, count=sum(counts))
    chunk_of = np.repeat(np.arange(len(chunks), dtype=np.int64), counts)
    first = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    # where each spill sequence goes: its chunk (-1: none of these rows) and place in that chunk
    size = int(sequences.max()) + 1 if sequences.size else 0
    dest_chunk = np.full(size, -1, dtype=np.int64)
    dest_chunk[sequences] = chunk_of
    dest_place = np.zeros(size, dtype=np.int64)
    dest_place[sequences] = np.arange(sequences.size) - first[chunk_of]
    scratch.mkdir(parents=True, exist_ok=True)
    for low in range(0, len(chunks), GATHER_FILES):
        high = min(low + GATHER_FILES, len(chunks))
        _sort_into_files(spill_paths, dest_chunk, dest_place, range(low, high), scratch)
        for index in range(low, high):
            path = scratch / f"chunk-{index:06d}.arrow"
            with pa.OSFile(str(path)) as source:
                table = pa.ipc.open_file(source).read_all().combine_chunks()
            path.unlink()
            ordered = table.take(numbers(np.argsort(as_numpy(table.column("place")))))
            yield _row_batch(ordered, bins[chunks[index].start:chunks[index].stop])


def _sort_into_files(spill_paths: list[Path], dest_chunk: np.ndarray, dest_place: np.ndarray, wanted: range,
                     scratch: Path) -> None:
    """Append every spill sequence bound for a chunk in `wanted` to scratch/chunk-<index>.arrow,
    with its place in the chunk (column `place`)."""
    writers: dict[int, Any] = {}
    offset = 0
    try:
        for batch in _spill_batches(spill_paths):
            index = np.arange(offset, offset + batch.num_rows)
            offset += batch.num_rows
            chunk = np.full(batch.num_rows, -1, dtype=np.int64)
            known = index < dest_chunk.size
            chunk[known] = dest_chunk[index[known]]
            picked = np.flatnonzero((chunk >= wanted.start) & (chunk < wanted.stop))
            if not picked.size:
                continue
            picked = picked[np.argsort(chunk[picked], kind="stable")]
            bounds = np.flatnonzero(np.diff(chunk[picked])) + 1
            for part in np.split(picked, bounds):
                piece = batch.take(numbers(part))
                piece = piece.append_column("place", numbers(dest_place[index[part]]))
                target = int(chunk[part[0]])
                if target not in writers:
                    sink = pa.OSFile(str(scratch / f"chunk-{target:06d}.arrow"), "wb")
                    writers[target] = (sink, pa.ipc.new_file(sink, piece.schema))
                writers[target][1].write_batch(piece)
    finally:
        for sink, writer in writers.values():
            writer.close()
            sink.close()


def _row_batch(taken: pa.Table, chosen: list[list[int]]) -> pa.RecordBatch:
    """The rows `chosen` as one ROW_SCHEMA record batch, from their sequences in row order."""
    counts = np.fromiter((len(row) for row in chosen), dtype=np.int32, count=len(chosen))
    seq_offsets = np.zeros(len(chosen) + 1, dtype=np.int32)
    np.cumsum(counts, out=seq_offsets[1:])
    ids = taken.column("input_ids").combine_chunks()
    seq_lengths = as_numpy(ids.value_lengths())
    token_offsets = np.zeros(len(chosen) + 1, dtype=np.int32)
    np.cumsum(np.add.reduceat(seq_lengths, seq_offsets[:-1]), out=token_offsets[1:])
    return pa.RecordBatch.from_arrays(
        [
            list_array(token_offsets, ids.flatten()),
            list_array(token_offsets, taken.column("labels").combine_chunks().flatten()),
            list_array(seq_offsets, numbers(seq_lengths)),
            list_array(seq_offsets, taken.column("example_id").combine_chunks()),
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
