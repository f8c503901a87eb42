"""Pack on a Ray cluster (`--ray ADDRESS`): the same packed folder as the local run, built on many machines.

    driver                                          workers (Ray Data)
    ------                                          ------------------
    inputs -> byte ranges (~8 MB, split anywhere) ->  count newlines per range       (tasks)
           -> first line number of every range    ->  encode: encode_lines on the range's lines,
                                                      one tokenizer per actor       (actor pool)
                                                      -> staging/spill-RRRRRR.arrow, stats-RRRRRR.parquet
           <- per range: sequence lengths and trained tokens (8 bytes a sequence), drop counts,
              the first drops, audit counts
    pack_bins(all lengths, in input order)        ->  staging/plan-*.npy (rows as sequence indices)
    shard ranges (same as local)                  ->  one task per shard: gather its rows from the
                                                      spills (packing.rows), write data-*.arrow;
                                                      one task: stats.parquet from the parts, in order
    dataset metadata, manifest (pipeline/packing/stage.py)

Why the output is byte-identical to the local run: sequences are numbered in input order (file,
line, split part) whatever range or node encoded them, `pack_bins` sees the same lengths in the
same order, and each shard is written by packing.rows' `gathered_batches` and `write_shard` over the same
rows. Ray Data retries a task or actor killed mid-run; every staged file is written under a temp
name and renamed, so a retry rewrites the same bytes and a killed attempt leaves nothing used.

The staging area lives inside pack's `.incomplete-<pid>-...` folder under --out-dir: when the driver
dies nothing finished-looking is left, and the next run's `remove_stale` deletes it. Every node must
see the inputs, the tokenizer folder and --out-dir at the same paths (shared storage); a node that
does not is reported by name with the path it could not see.

This module is the driver's side (`RayPack`); the nodes' side is in cluster.py (joining
the cluster, what a worker checks), ranges.py (byte ranges and their rows),
encode.py (the encoding actor) and write.py (the shard and stats tasks).
Nothing here is imported unless `--ray` is given.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sftpack.distributed.cluster import CHECK_FILE, cluster_cpus, connect, leave, run_dataset
from sftpack.distributed.encode import Encoder
from sftpack.distributed.ranges import numbered_ranges
from sftpack.distributed.write import write_part
from sftpack.errors import SftpackError

STAGING = ".staging"


def rows_csr(bins: Any) -> tuple[np.ndarray, np.ndarray]:
    """(sequence indices row after row, row offsets) of `pack_bins`' result."""
    if hasattr(bins, "offsets"):
        return np.asarray(bins.items), np.asarray(bins.offsets)
    counts = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    offsets = np.zeros(len(bins) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    items = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=int(offsets[-1]))
    return items, offsets


class RayPack:
    """pack's encode and write steps on a Ray cluster; `sftpack.packing.stage._build` drives it.

    Args:
        tmp: pack's temp output folder (the staging area goes inside it).
        sources: the opened inputs (readers.InputSource).
        input_ids: their identities (lines or rows) as the driver read them.
        cfg: pack options; `cfg.ray` is the address.
        tokenizer_files: the tokenizer folder's file hashes (the fingerprint's), checked on every node.
    """

    def __init__(self, tmp: Path, sources: list[Any], input_ids: list[dict], cfg: Any,
                 tokenizer_files: dict[str, str] | None):
        from sftpack.store.fingerprint import tokenizer_files_identity

        self.engine = connect(cfg.ray)
        self.folder = Path(tmp).resolve()
        self.staging = self.folder / STAGING
        self.staging.mkdir()
        self.token = secrets.token_hex(16)
        (self.staging / CHECK_FILE).write_text(self.token, encoding="ascii")
        self.sources = sources
        self.total_lines = sum(int(i.get("lines", i.get("rows", 0))) for i in input_ids)
        # Workers get absolute paths; the manifest keeps the options as given.
        self.worker_cfg = dataclasses.replace(
            cfg, tokenizer=str(Path(cfg.tokenizer).resolve()),
            chat_template=str(Path(cfg.chat_template).resolve()) if cfg.chat_template else None)
        self.cfg = cfg
        self.tokenizer_files = tokenizer_files or tokenizer_files_identity(Path(cfg.tokenizer))
        self.ranges: list[dict[str, Any]] = []
        self.trained = np.zeros(0, np.int32)

    def encode(self) -> tuple[np.ndarray, dict[str, int], list[dict], dict[str, int]]:
        """Encode every row on the cluster; return what `packing.encode.encode_all` returns (lengths in input
        order, drop counts, the first 20 drops, audit counts) and write stats.parquet's parts."""
        import ray.data

        from sftpack.packing.encode import AUDIT_TOTALS
        from sftpack.progress import progress_bar

        cpus = cluster_cpus()
        self.ranges = numbered_ranges(self.sources, cpus)
        if not self.ranges:
            return np.zeros(0, np.int64), {}, [], dict.fromkeys(AUDIT_TOTALS, 0)
        readings = [(source.layout, source.columns) for source in self.sources]
        lengths: dict[int, np.ndarray] = {}
        trained: dict[int, np.ndarray] = {}
        dropped: dict[str, int] = {}
        firsts: dict[int, list[dict]] = {}
        audit = dict.fromkeys(AUDIT_TOTALS, 0)
        progress = progress_bar(self.total_lines, "pack: encode (ray)")
        try:
            # The job rides on a subclass (pickled by value), not in constructor arguments: Ray keeps
            # those in the object store, where a restarted actor may no longer find them.
            job = (self.worker_cfg, str(self.staging), self.token, self.tokenizer_files, readings)
            encoder = type("Encoder", (Encoder,), {"job": job})
            encoded = ray.data.from_items(self.ranges, override_num_blocks=len(self.ranges)).map_batches(
                encoder, batch_size=1, num_cpus=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus))
            for row in run_dataset(encoded.iter_rows()):
                k = int(row["range"])
                lengths[k] = np.frombuffer(row["lengths"], dtype=np.int32)
                trained[k] = np.frombuffer(row["trained"], dtype=np.int32)
                summary = json.loads(row["summary"])
                for reason, count in summary["dropped"].items():
                    dropped[reason] = dropped.get(reason, 0) + count
                for key, value in summary["audit"].items():
                    audit[key] += value
                firsts[k] = summary["first"]
                progress.update(int(row["lines"]))
        finally:
            progress.close()
        missing = [spec["range"] for spec in self.ranges if spec["range"] not in lengths]
        if missing:
            raise SftpackError(f"--ray: ranges {missing[:5]} came back from no worker", exit_code=1)
        order = range(len(self.ranges))
        self.trained = np.concatenate([trained[k] for k in order])
        first_errors = [e for k in order for e in firsts[k]][:20]
        audit["examples_without_trained_tokens"] = dropped.get("no_trained_tokens", 0)
        return np.concatenate([lengths[k] for k in order]).astype(np.int64), dropped, first_errors, audit

    def write_shards(self, bins: Any, lengths: np.ndarray) -> list[dict[str, Any]]:
        """Write the shards of `bins` and stats.parquet on the cluster; return pack's shard entries.

        Raises:
            SftpackError: the shards' trained tokens differ from what encoding counted.
        """
        import ray.data

        from sftpack.packing.rows import shard_ranges
        from sftpack.progress import progress_bar
        from sftpack.store.shards import shard_name

        items, offsets = rows_csr(bins)
        np.save(self.staging / "plan-items.npy", items)
        np.save(self.staging / "plan-offsets.npy", offsets)
        rows = len(offsets) - 1
        row_tokens = np.add.reduceat(lengths[items], offsets[:-1]) if items.size else np.zeros(rows, np.int64)
        ranges = shard_ranges(row_tokens, self.cfg.shard_tokens) if rows else [range(0)]
        common = {"staging": str(self.staging), "folder": str(self.folder), "token": self.token,
                  "ranges": len(self.ranges)}
        by_source: dict[int, list[int]] = {}
        for spec in self.ranges:
            by_source.setdefault(spec["source"], []).append(spec["range"])
        parts = [{**common, "kind": "stats", "index": -1, "file": "", "start": 0, "stop": 0,
                  "sources": json.dumps([by_source[s] for s in sorted(by_source)]), "batch_size": self.cfg.batch_size}]
        for index, shard_rows in enumerate(ranges):
            parts.append({**common, "kind": "shard", "index": index, "file": shard_name(index, len(ranges)),
                          "start": shard_rows.start, "stop": shard_rows.stop, "sources": "", "batch_size": 0})
        written: dict[int, dict[str, Any]] = {}
        progress = progress_bar(rows, "pack: write (ray)")
        try:
            dataset = ray.data.from_items(parts, override_num_blocks=len(parts)).map(write_part, num_cpus=1)
            for row in run_dataset(dataset.iter_rows()):
                written[int(row["index"])] = row
                if row["index"] >= 0:
                    progress.update(len(ranges[int(row["index"])]))
        finally:
            progress.close()
        shards = [{"file": shard_name(index, len(ranges)), "sha256": written[index]["sha256"],
                   "rows": len(shard_rows), "tokens": int(row_tokens[shard_rows.start:shard_rows.stop].sum()),
                   "trained_tokens": int(written[index]["trained_tokens"])} for index, shard_rows in enumerate(ranges)]
        counted = int(self.trained.sum(dtype=np.int64))
        if sum(s["trained_tokens"] for s in shards) != counted:
            raise SftpackError(f"--ray: the shards hold {sum(s['trained_tokens'] for s in shards)} trained tokens, "
                               f"encoding counted {counted}; the staging area changed under the run", exit_code=1)
        return shards

    def close(self) -> None:
        """Remove the staging area (the folder's rename comes next, in pack) and leave the cluster.

        (`cluster.leave`: no late node message prints after the folder path).
        """
        shutil.rmtree(self.staging, ignore_errors=True)
        leave()
