"""Pack's two steps, mapped by any executor (sftpack.execution) over the same tasks:

    EncodeRanges: an input range ──Encoder──> staging/spill-RRRRRR.arrow, staging/stats-RRRRRR.parquet
                  -> per range: sequence lengths and trained tokens (8 bytes a sequence), drop counts,
                     the first drops, audit counts
    (the driver: pack_bins over every length in input order -> staging/plan-*.npy; shard ranges)
    WriteParts:   a shard: its rows gathered from the spills (packing.rows) -> data-*.arrow;
                  the stats part: stats.parquet from the ranges' parts, in order

Sequences are numbered in input order (file, line, split part) whatever worker encoded them, so
`pack_bins` sees the same lengths in the same order and every shard holds the same rows, for any
number of workers, on one machine or many. Every staged file is written under a temp name and
renamed, so a retried task rewrites the same bytes and a killed one leaves nothing used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sftpack.errors import SftpackError
from sftpack.execution import Step
from sftpack.execution.cluster import Staging, atomic_path, check_input, node_name
from sftpack.io.ranges import InputRange
from sftpack.io.readers import InputSource
from sftpack.packing.encode import AUDIT_TOTALS, SPILL_SCHEMA, STATS_SCHEMA, Encoder, count_drops
from sftpack.packing.options import PackConfig
from sftpack.store.arrays import as_numpy, table_from_rows
from sftpack.templates.masking import IGNORE_INDEX


MIN_RANGE_BYTES = 1 << 20
"""The smallest input range pack encodes as a task of its own: about a second of encoding (a whole
input this small runs in the driver's process, never a worker pool)."""


def spill_name(index: int) -> str:
    return f"spill-{index:06d}.arrow"


def stats_name(index: int) -> str:
    return f"stats-{index:06d}.parquet"


class EncodeRanges(Step):
    """Encode one input range per task into staged spill and stats files.

    Args:
        cfg: pack options (tokenizer and template paths absolute: a node resolves nothing itself).
        sources: the opened inputs the ranges belong to.
        staging: the staging folder.
        tokenizer_files: the driver's tokenizer file hashes; a worker whose folder differs is refused.
        loaded: (tokenizer, renderer) the driver loaded already (never pickled: a Ray node loads its own).
    """

    def __init__(self, cfg: PackConfig, sources: list[InputSource], staging: Staging,
                 tokenizer_files: dict[str, str], loaded: tuple[Any, Any] | None = None):
        self.cfg, self.sources, self.staging, self.tokenizer_files = cfg, sources, staging, tokenizer_files
        self.encoder = Encoder.load(cfg, *loaded) if loaded else None

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"encoder": None}

    def setup(self) -> None:
        if self.encoder is not None:
            return
        from sftpack.store.fingerprint import tokenizer_files_identity

        self.staging.check()
        try:
            files = tokenizer_files_identity(Path(self.cfg.tokenizer))
        except OSError:
            files = None
        if files != self.tokenizer_files:
            raise SftpackError(f"{node_name()}: the tokenizer folder {self.cfg.tokenizer} is missing or differs from "
                               "the driver's: every node must see the same tokenizer folder at the same path",
                               exit_code=2)
        self.encoder = Encoder.load(self.cfg)

    def units(self, task: InputRange, result: dict[str, Any]) -> int:
        return result["lines"]

    def run(self, task: InputRange) -> dict[str, Any]:
        import pyarrow.parquet as pq

        self.staging.check()
        if task.path:
            check_input(task.path, task.size)
        source = self.sources[task.source]
        stem = source.example_stem(task.label)
        spill_path, stats_path = self.staging.file(spill_name(task.index)), self.staging.file(stats_name(task.index))
        spill_tmp, stats_tmp = atomic_path(spill_path), atomic_path(stats_path)
        lengths, trained, first = [], [], []
        dropped: dict[str, int] = {}
        audit = dict.fromkeys(AUDIT_TOTALS, 0)
        lines = 0
        rows = ((row.number, row.record, row.error) for row in source.range_rows(task))
        try:
            with pa.OSFile(str(spill_tmp), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as spill, \
                    pq.ParquetWriter(str(stats_tmp), STATS_SCHEMA) as stats_writer:
                for batch in _chunks(rows, self.cfg.batch_size):
                    result = self.encoder.encode(task.label, stem, batch)
                    spill.write_batch(result["spill"])
                    lengths.append(as_numpy(result["spill"].column("input_ids").value_lengths()))
                    trained.append(_trained_per_sequence(result["spill"].column("labels")))
                    for key, value in result["audit"].items():
                        audit[key] += value
                    count_drops(result["stats"], dropped, first)
                    stats_writer.write_table(table_from_rows(result["stats"], STATS_SCHEMA))
                    lines += len(result["stats"])
            os.replace(spill_tmp, spill_path)
            os.replace(stats_tmp, stats_path)
        finally:
            spill_tmp.unlink(missing_ok=True)
            stats_tmp.unlink(missing_ok=True)
        cat = lambda parts: np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)  # noqa: E731
        return {"lines": lines, "lengths": cat(lengths), "trained": cat(trained), "dropped": dropped,
                "first": first, "audit": audit}


def _trained_per_sequence(labels: pa.ListArray) -> np.ndarray:
    flags = (as_numpy(labels.flatten()) != IGNORE_INDEX).astype(np.int32)
    starts = as_numpy(labels.offsets)[:-1]
    return np.add.reduceat(flags, starts) if flags.size else np.zeros(len(labels), np.int32)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class WriteParts(Step):
    """One output file per task: a shard ({"index", "file", "start", "stop"}: rows of the staged plan)
    or, for index -1, stats.parquet from the ranges' stats parts.

    Args:
        staging: the staging folder (spills, stats parts, plan-items.npy and plan-offsets.npy).
        folder: the packed folder being built.
        ranges: how many input ranges were encoded (spill i holds range i's sequences).
        stats_parts: per input, its ranges in order (stats.parquet's row groups follow inputs).
        batch_size: rows per stats.parquet row group.
    """

    def __init__(self, staging: Staging, folder: Path, ranges: int, stats_parts: list[list[int]], batch_size: int):
        self.staging, self.folder, self.ranges = staging, str(folder), ranges
        self.stats_parts, self.batch_size = stats_parts, batch_size

    def units(self, task: dict[str, Any], result: dict[str, Any]) -> int:
        return task["stop"] - task["start"]

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        self.staging.check()
        if task["index"] < 0:
            _write_stats(self.staging, Path(self.folder) / "stats.parquet", self.stats_parts, self.batch_size)
            return {"index": -1, "sha256": "", "trained_tokens": 0}
        from sftpack.packing.rows import gathered_batches, row_chunks
        from sftpack.store.shards import write_shard

        spill_paths = [self.staging.file(spill_name(k)) for k in range(self.ranges)]  # row i is sequence i
        items = np.load(self.staging.file("plan-items.npy"), mmap_mode="r")
        offsets = np.load(self.staging.file("plan-offsets.npy"), mmap_mode="r")
        bins = [items[offsets[r]:offsets[r + 1]].tolist() for r in range(task["start"], task["stop"])]
        trained = 0

        def counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            nonlocal trained
            for batch in batches:
                trained += int((as_numpy(batch.column("labels").flatten()) != IGNORE_INDEX).sum())
                yield batch

        target = Path(self.folder) / task["file"]
        tmp = atomic_path(target)
        scratch = self.staging.file(f"gather-{task['index']:06d}")
        try:
            sha = write_shard(tmp, counted(gathered_batches(spill_paths, bins, row_chunks(range(len(bins))), scratch)))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(scratch, ignore_errors=True)
        return {"index": task["index"], "sha256": sha, "trained_tokens": trained}


def _write_stats(staging: Staging, target: Path, sources: list[list[int]], batch_size: int) -> None:
    """stats.parquet: one row group per `batch_size` rows of one input (cut where a folder's file
    ends), whatever ranges the rows were encoded in."""
    import pyarrow.parquet as pq

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
                    with pq.ParquetFile(staging.file(stats_name(k))) as part:  # read_table imports pandas
                        table = part.read()
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


# ---------------------------------------------------------------- the driver's side: plan, map, reduce

def encode_all(executor: Any, sources: list[InputSource], cfg: PackConfig, staging: Staging,
               tokenizer_files: dict[str, str], loaded: tuple[Any, Any], total_lines: int) -> dict[str, Any]:
    """Every input range encoded by `executor` into `staging`; the results reduced in input order:
    lengths and trained tokens per sequence, drop counts, the first 20 drops, audit counts, and which
    ranges each input has (`stats_parts`) and how many there are (`ranges`).

    Raises:
        SftpackError: a dataset name on a cluster (nodes read files), or a worker's error.
    """
    from sftpack.config.data_options import with_absolute_paths
    from sftpack.io.ranges import byte_ranges, numbered
    from sftpack.progress import progress_bar

    ranges = numbered(byte_ranges(sources, executor.workers, MIN_RANGE_BYTES, executor.distributed), executor)
    step = EncodeRanges(with_absolute_paths(cfg), sources, staging, tokenizer_files, None if executor.distributed else loaded)
    with progress_bar(total_lines, "pack: encode") as bar:
        results = list(executor.map(step, ranges, bar))
    dropped: dict[str, int] = {}
    audit = dict.fromkeys(AUDIT_TOTALS, 0)
    for result in results:
        for reason, count in result["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
        for key, value in result["audit"].items():
            audit[key] += value
    audit["examples_without_trained_tokens"] = dropped.get("no_trained_tokens", 0)
    stats_parts: dict[int, list[int]] = {}
    for task in ranges:
        stats_parts.setdefault(task.source, []).append(task.index)
    lengths = np.concatenate([r["lengths"] for r in results] or [np.zeros(0, np.int32)]).astype(np.int64)
    return {"lengths": lengths, "trained": np.concatenate([r["trained"] for r in results] or [np.zeros(0, np.int32)]),
            "dropped": dropped, "first": [e for r in results for e in r["first"]][:20], "audit": audit,
            "ranges": len(ranges), "stats_parts": [stats_parts[s] for s in sorted(stats_parts)]}


def rows_csr(bins: Any) -> tuple[np.ndarray, np.ndarray]:
    """(sequence indices row after row, row offsets) of `pack_bins`' result."""
    if hasattr(bins, "offsets"):
        return np.asarray(bins.items), np.asarray(bins.offsets)
    counts = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    offsets = np.zeros(len(bins) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    items = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=int(offsets[-1]))
    return items, offsets


def write_all(executor: Any, staging: Staging, folder: Path, bins: Any, encoded: dict[str, Any],
              cfg: PackConfig) -> list[dict[str, Any]]:
    """The shards of `bins` and stats.parquet written by `executor`; pack's shard entries.

    Raises:
        SftpackError: the shards' trained tokens differ from what encoding counted.
    """
    from sftpack.packing.rows import shard_ranges
    from sftpack.progress import progress_bar
    from sftpack.store.shards import shard_name

    items, offsets = rows_csr(bins)
    np.save(staging.file("plan-items.npy"), items)
    np.save(staging.file("plan-offsets.npy"), offsets)
    rows = len(offsets) - 1
    lengths = encoded["lengths"]
    row_tokens = np.add.reduceat(lengths[items], offsets[:-1]) if items.size else np.zeros(rows, np.int64)
    ranges = shard_ranges(row_tokens, cfg.shard_tokens) if rows else [range(0)]
    tasks = [{"index": -1, "file": "stats.parquet", "start": 0, "stop": 0}]
    tasks += [{"index": index, "file": shard_name(index, len(ranges)), "start": r.start, "stop": r.stop}
              for index, r in enumerate(ranges)]
    step = WriteParts(staging, folder.resolve(), encoded["ranges"], encoded["stats_parts"], cfg.batch_size)
    with progress_bar(rows, "pack: write") as bar:
        written = list(executor.map(step, tasks, bar))[1:]
    shards = [{"file": task["file"], "sha256": done["sha256"], "rows": task["stop"] - task["start"],
               "tokens": int(row_tokens[task["start"]:task["stop"]].sum()),
               "trained_tokens": int(done["trained_tokens"])}
              for task, done in zip(tasks[1:], written)]
    counted = int(encoded["trained"].sum(dtype=np.int64))
    if sum(s["trained_tokens"] for s in shards) != counted:
        raise SftpackError(f"the shards hold {sum(s['trained_tokens'] for s in shards)} trained tokens, encoding "
                           f"counted {counted}; the staging area changed under the run", exit_code=1)
    return shards
