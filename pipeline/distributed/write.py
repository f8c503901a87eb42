"""Writing pack's output on a Ray cluster: one task per shard gathers its rows from the staged
spills and writes it as the local run would (packing.rows.gathered_batches, shards.write_shard);
one task writes stats.parquet from the staged parts, in order."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sftpack.distributed.cluster import atomic_path, check_shared


def write_part(spec: dict[str, Any]) -> dict[str, Any]:
    """One output file: a shard (rows spec.start..spec.stop of the plan) or, for kind 'stats', stats.parquet."""
    staging, folder = Path(spec["staging"]), Path(spec["folder"])
    check_shared(str(staging), spec["token"])
    if spec["kind"] == "stats":
        _write_stats(staging, folder / "stats.parquet", json.loads(spec["sources"]), spec["batch_size"])
        return {"index": -1, "sha256": "", "trained_tokens": 0}
    from sftpack.packing.rows import gathered_batches, row_chunks
    from sftpack.templates.masking import IGNORE_INDEX
    from sftpack.store.shards import write_shard

    spill_paths = [staging / f"spill-{k:06d}.arrow" for k in range(spec["ranges"])]  # row i is sequence i
    items = np.load(staging / "plan-items.npy", mmap_mode="r")
    offsets = np.load(staging / "plan-offsets.npy", mmap_mode="r")
    start, stop = spec["start"], spec["stop"]
    bins = [items[offsets[r]:offsets[r + 1]].tolist() for r in range(start, stop)]
    trained = 0

    def counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        nonlocal trained
        for batch in batches:
            trained += int((np.asarray(batch.column("labels").flatten()) != IGNORE_INDEX).sum())
            yield batch

    target = folder / spec["file"]
    tmp = atomic_path(target)
    scratch = staging / f"gather-{spec['index']:06d}"
    try:
        batches = gathered_batches(spill_paths, bins, row_chunks(range(len(bins))), scratch)
        sha = write_shard(tmp, counted(batches))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return {"index": spec["index"], "sha256": sha, "trained_tokens": trained}


def _write_stats(staging: Path, target: Path, sources: list[list[int]], batch_size: int) -> None:
    """stats.parquet as the local run writes it: one row group per batch packing.encode.line_batches makes
    (per input, `batch_size` rows, cut where a folder's file ends)."""
    import pyarrow.parquet as pq

    from sftpack.packing.encode import STATS_SCHEMA

    def write(table: pa.Table) -> None:
        labels = table.column("input").to_pylist()
        start = 0
        for end in range(1, len(labels) + 1):
            if end == len(labels) or labels[end] != labels[start]:
                writer.write_table(table.slice(start, end - start))
                start = end

    tmp = atomic_path(target)
    try:
        with pq.ParquetWriter(str(tmp), STATS_SCHEMA) as writer:
            for ranges in sources:  # one input's ranges, in order
                pending: list[pa.Table] = []
                held = 0
                for k in ranges:
                    table = pq.read_table(staging / f"stats-{k:06d}.parquet", schema=STATS_SCHEMA)
                    pending.append(table)
                    held += table.num_rows
                    while held >= batch_size:
                        whole = pa.concat_tables(pending).combine_chunks()
                        write(whole.slice(0, batch_size))
                        pending = [whole.slice(batch_size)]
                        held = pending[0].num_rows
                if held:
                    write(pa.concat_tables(pending).combine_chunks())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
