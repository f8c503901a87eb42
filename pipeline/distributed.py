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
                                                      memory-mapped spills, write data-*.arrow;
                                                      one task: stats.parquet from the parts, in order
    dataset metadata, manifest (pipeline/pack.py)

Why the output is byte-identical to the local run: sequences are numbered in input order (file,
line, split part) whatever range or node encoded them, `pack_bins` sees the same lengths in the
same order, and each shard is written by pack_rows' `row_batches` and `write_shard` over the same
rows. Ray Data retries a task or actor killed mid-run; every staged file is written under a temp
name and renamed, so a retry rewrites the same bytes and a killed attempt leaves nothing used.

The staging area lives inside pack's `.incomplete-<pid>-...` folder under --out-dir: when the driver
dies nothing finished-looking is left, and the next run's `remove_stale` deletes it. Every node must
see the inputs, the tokenizer folder and --out-dir at the same paths (shared storage); a node that
does not is reported by name with the path it could not see.

Nothing here is imported unless `--ray` is given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.errors import SftpackError

STAGING = ".staging"
CHECK_FILE = "shared-check"
RANGE_BYTES = 8 << 20
"""Largest byte range one encode call reads: big enough that per-call overhead is small, small
enough that a retried range costs little and every CPU gets several."""
MIN_RANGE_BYTES = 64 << 10
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


# ---------------------------------------------------------------- connecting

def connect(address: str) -> dict[str, Any]:
    """Join (or start, for `local`) the Ray cluster at `address`; return what the manifest records.

    Args:
        address: `local` (a Ray instance in this process's machine, all its CPUs), `auto` (the cluster
            `ray start` runs on this machine), `HOST:PORT` or `ray://HOST:PORT`.

    Raises:
        SftpackError: no cluster at `address`.
    """
    # Ray's C++ core logs warnings (e.g. how it found this host's address) straight to stderr;
    # failures still come back as exceptions.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                                  "runtime_env": {"env_vars": WORKER_ENV}}
        if address == "local":  # a private instance on loopback: it needs no network
            kwargs |= {"address": "local", "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except Exception as err:  # ConnectionError, or Ray's own when no cluster answers
            raise SftpackError(f"--ray {address}: cannot connect to a Ray cluster there: {err}; start one with "
                               "`ray start --head` (README \"More than one machine\") or use --ray local") from None
    import ray.data

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("ray.data")]:
        logging.getLogger(name).setLevel(logging.WARNING)  # no INFO line per finished dataset
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar, the driver's own (pipeline.progress)
    context.print_on_execution_start = False
    resources = ray.cluster_resources()
    return {"name": "ray", "address": address, "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "cpus": int(resources.get("CPU", 0)), "ray_version": ray.__version__}


def _cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _run_dataset(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Iterate a Ray Data pipeline's rows; a worker's SftpackError comes back as one, its message
    without Ray's remote traceback, with its exit code."""
    try:
        yield from rows
    except Exception as err:  # Ray wraps a task's exception (RayTaskError, Ray Data's own)
        marker = "SftpackError: "
        cause: BaseException | None = err
        while cause is not None:
            text = str(cause)
            if isinstance(cause, SftpackError) or marker in text:
                message = text[text.rindex(marker) + len(marker):].strip() if marker in text else text
                raise SftpackError(message, exit_code=getattr(cause, "exit_code", 2)) from None
            cause = getattr(cause, "cause", None) or cause.__cause__
        raise SftpackError(f"--ray: the cluster failed: {type(err).__name__}: {err}", exit_code=1) from None


# ---------------------------------------------------------------- worker-side checks

def _node() -> str:
    try:
        import ray

        return f"Ray node {ray.util.get_node_ip_address()} ({socket.gethostname()})"
    except Exception:
        return f"Ray node {socket.gethostname()}"


def check_shared(staging: str, token: str) -> None:
    """Raise unless this process sees the driver's staging folder (the same `token` in its check file).

    Raises:
        SftpackError: naming this node and the path, and the fix.
    """
    path = Path(staging) / CHECK_FILE
    try:
        seen = path.read_text(encoding="ascii")
    except OSError:
        seen = None
    if seen != token:
        raise SftpackError(f"{_node()} cannot see the output folder {Path(staging).parent.parent} "
                           f"({path} {'missing' if seen is None else 'is another folder'}): every node must "
                           "mount --out-dir at the same path (shared storage)", exit_code=2)


def _check_input(path: str, size: int) -> None:
    try:
        actual = os.path.getsize(path)
    except OSError:
        actual = None
    if actual != size:
        raise SftpackError(f"{_node()} cannot see the input {path} as the driver does "
                           f"({'missing' if actual is None else f'{actual} bytes, driver {size}'}): every node "
                           "must see the inputs at the same path (shared storage)", exit_code=2)


# ---------------------------------------------------------------- byte ranges

def byte_ranges(sources: list[Any], range_bytes: int) -> list[dict[str, Any]]:
    """The units of work: every plain JSONL file cut into ranges of at most `range_bytes` (a line belongs
    to the range it starts in); any other file (compressed JSONL, Parquet, Arrow) whole.

    Raises:
        SftpackError: an input that is a dataset name (it has no files the nodes could read).
    """
    from pipeline.pack_encode import example_stem
    from pipeline.readers import file_container

    ranges = []
    for s, source in enumerate(sources):
        if not source.files:
            raise SftpackError(f"{source.spec}: --ray reads input files on the nodes, and a dataset name has none; "
                               "write it with `sftpack convert-data` first, or pack without --ray")
        for path in source.files:
            label = source._label(path)
            size = os.path.getsize(path)
            common = {"source": s, "path": str(Path(path).resolve()), "size": size, "label": label,
                      "stem": example_stem(source, label), "first_line": 1}
            if file_container(path) != "jsonl":
                ranges.append({**common, "range": len(ranges), "whole": True, "start": 0, "end": size})
                continue
            for start in range(0, size, range_bytes):
                ranges.append({**common, "range": len(ranges), "whole": False, "start": start,
                               "end": min(start + range_bytes, size)})
    return ranges


def _count_newlines(spec: dict[str, Any]) -> dict[str, Any]:
    _check_input(spec["path"], spec["size"])
    if spec["whole"]:
        return {"range": spec["range"], "newlines": 0}
    count, left = 0, spec["end"] - spec["start"]
    with open(spec["path"], "rb") as handle:
        handle.seek(spec["start"])
        while left > 0:
            block = handle.read(min(left, 4 << 20))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return {"range": spec["range"], "newlines": count}


def range_lines(path: str, start: int, end: int, first_line: int,
                blanks: bool = False) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line with its newline) for the lines starting in [start, end).

    `first_line` is the number the line at `start` has if a line starts there; otherwise the
    partial line is skipped and the next one gets first_line + 1. Lines are split as the readers
    split JSONL (binary readline: on b"\\n"); blank lines are skipped unless `blanks`.
    """
    with open(path, "rb") as handle:
        position, number = start, first_line
        if start > 0:
            handle.seek(start - 1)
            if handle.read(1) != b"\n":  # mid-line: that line belongs to the range before
                position += len(handle.readline())
                number += 1
        while position < end:
            raw = handle.readline()
            if not raw:
                break
            if blanks or raw.strip():
                yield number, raw
            position += len(raw)
            number += 1


def range_rows(spec: dict[str, Any], layout: str, columns: Any, blanks: bool = False) -> Iterator[Any]:
    """One range's readers.Row objects, as `InputSource.rows(blanks)` gives them for that part of the file."""
    from pipeline.messages import parse_line
    from pipeline.readers import Row, _file_items, converter

    convert = converter(layout, columns)
    if spec["whole"]:
        items = _file_items(Path(spec["path"]))
    else:
        items = ((n, raw, *(_parsed(parse_line(raw)) if raw.strip() else (None, None))) for n, raw in
                 range_lines(spec["path"], spec["start"], spec["end"], spec["first_line"], blanks))
    for number, raw, record, error in items:
        if record is None and error is None:
            if blanks:
                yield Row(spec["label"], number, None, None, raw)
            continue
        original = record
        if error is None:
            record, error = convert(record)
        yield Row(spec["label"], number, record, error, raw, original)


def _parsed(found: tuple[Any, list]) -> tuple[Any, Any]:
    record, errors = found
    return record, errors[0] if errors else None


# ---------------------------------------------------------------- encoding (actors)

def _atomic_path(path: Path) -> Path:
    return path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")


class Encoder:
    """One Ray Data actor: loads the tokenizer once, encodes whole ranges with `pack_encode.encode_lines`.

    `job` holds cfg (pack options, paths absolute), the staging folder and its check file's token
    (check_shared), the driver's tokenizer file hashes (a node whose folder differs is refused) and
    (layout, column map) per input source.
    """

    job: tuple = ()
    """(cfg, staging, token, tokenizer_files, readings): set on a subclass per run (RayPack.encode)."""

    def __init__(self):
        from pipeline.fingerprint import tokenizer_files_identity
        from pipeline.pack_encode import set_worker_state
        from pipeline.tokenizer import load_renderer

        cfg, staging, token, tokenizer_files, readings = self.job
        check_shared(staging, token)
        try:
            files = tokenizer_files_identity(Path(cfg.tokenizer))
        except OSError:
            files = None
        if files != tokenizer_files:
            raise SftpackError(f"{_node()}: the tokenizer folder {cfg.tokenizer} is missing or differs from the "
                               "driver's: every node must see the same tokenizer folder at the same path", exit_code=2)
        set_worker_state(cfg, *load_renderer(cfg.tokenizer, cfg.chat_template))  # as pack.run does
        self.cfg, self.staging, self.token, self.readings = cfg, Path(staging), token, readings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {key: [] for key in ("range", "lines", "lengths", "trained", "summary")}
        for k in range(len(batch["range"])):
            spec = {key: batch[key][k].item() if hasattr(batch[key][k], "item") else batch[key][k] for key in batch}
            result = self._encode_range(spec)
            for key in out:
                out[key].append(result[key])
        return {key: np.array(values, dtype=object if key in ("lengths", "trained", "summary") else np.int64)
                for key, values in out.items()}

    def _encode_range(self, spec: dict[str, Any]) -> dict[str, Any]:
        import pyarrow.parquet as pq

        from pipeline.pack_encode import AUDIT_TOTALS, SPILL_SCHEMA, STATS_SCHEMA, encode_lines
        from pipeline.masking import IGNORE_INDEX

        check_shared(str(self.staging), self.token)
        _check_input(spec["path"], spec["size"])
        spill_path = self.staging / f"spill-{spec['range']:06d}.arrow"
        stats_path = self.staging / f"stats-{spec['range']:06d}.parquet"
        spill_tmp, stats_tmp = _atomic_path(spill_path), _atomic_path(stats_path)
        lengths, trained = [], []
        dropped: dict[str, int] = {}
        first: list[dict] = []
        audit = dict.fromkeys(AUDIT_TOTALS, 0)
        lines = 0
        rows = ((row.number, row.record, row.error) for row in range_rows(spec, *self.readings[spec["source"]]))
        try:
            with pa.OSFile(str(spill_tmp), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as spill, \
                    pq.ParquetWriter(str(stats_tmp), STATS_SCHEMA) as stats_writer:
                for batch in _chunks(rows, self.cfg.batch_size):
                    result = encode_lines((spec["label"], spec["stem"], batch))
                    spill.write_batch(result["spill"])
                    lengths.append(np.asarray(result["spill"].column("input_ids").value_lengths(), dtype=np.int32))
                    labels = result["spill"].column("labels")
                    flags = (np.asarray(labels.flatten()) != IGNORE_INDEX).astype(np.int32)
                    starts = np.asarray(labels.offsets)[:-1]
                    trained.append(np.add.reduceat(flags, starts) if flags.size else np.zeros(len(labels), np.int32))
                    for key, value in result["audit"].items():
                        audit[key] += value
                    for entry in result["stats"]:  # as pack_encode.encode_all counts them
                        reason = entry["dropped"]
                        if reason:
                            dropped[reason] = dropped.get(reason, 0) + 1
                            if len(first) < 20:
                                first.append({"input": entry["input"], "line": entry["line"], "reason": reason,
                                              "message": entry.get("error", reason)}
                                             | ({"rule": entry["rule"]} if "rule" in entry else {}))
                    stats_writer.write_table(pa.Table.from_pylist(result["stats"], schema=STATS_SCHEMA))
                    lines += len(result["stats"])
            os.replace(spill_tmp, spill_path)
            os.replace(stats_tmp, stats_path)
        finally:
            spill_tmp.unlink(missing_ok=True)
            stats_tmp.unlink(missing_ok=True)
        cat = lambda parts: np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)  # noqa: E731
        return {"range": spec["range"], "lines": lines, "lengths": cat(lengths).tobytes(),
                "trained": cat(trained).tobytes(),
                "summary": json.dumps({"dropped": dropped, "first": first, "audit": audit})}


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------- shards (tasks)

def _open_spill(staging: Path, ranges: int) -> pa.Table:
    """Every range's spill, memory-mapped and concatenated in range order: row i is sequence i."""
    tables = []
    for k in range(ranges):
        source = pa.memory_map(str(staging / f"spill-{k:06d}.arrow"))
        tables.append(pa.ipc.open_file(source).read_all())
    from pipeline.pack_encode import SPILL_SCHEMA

    return pa.concat_tables(tables) if tables else SPILL_SCHEMA.empty_table()


def _write_part(spec: dict[str, Any]) -> dict[str, Any]:
    """One output file: a shard (rows spec.start..spec.stop of the plan) or, for kind 'stats', stats.parquet."""
    staging, folder = Path(spec["staging"]), Path(spec["folder"])
    check_shared(str(staging), spec["token"])
    if spec["kind"] == "stats":
        _write_stats(staging, folder / "stats.parquet", json.loads(spec["sources"]), spec["batch_size"])
        return {"index": -1, "sha256": "", "trained_tokens": 0}
    from pipeline.pack_rows import row_batches
    from pipeline.masking import IGNORE_INDEX
    from pipeline.shards import write_shard

    spill = _open_spill(staging, spec["ranges"])
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
    tmp = _atomic_path(target)
    try:
        sha = write_shard(tmp, counted(row_batches(spill, bins, range(len(bins)))))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return {"index": spec["index"], "sha256": sha, "trained_tokens": trained}


def _write_stats(staging: Path, target: Path, sources: list[list[int]], batch_size: int) -> None:
    """stats.parquet as the local run writes it: one row group per batch pack_encode.line_batches makes
    (per input, `batch_size` rows, cut where a folder's file ends)."""
    import pyarrow.parquet as pq

    from pipeline.pack_encode import STATS_SCHEMA

    def write(table: pa.Table) -> None:
        labels = table.column("input").to_pylist()
        start = 0
        for end in range(1, len(labels) + 1):
            if end == len(labels) or labels[end] != labels[start]:
                writer.write_table(table.slice(start, end - start))
                start = end

    tmp = _atomic_path(target)
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


# ---------------------------------------------------------------- the driver's side

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
    """pack's encode and write steps on a Ray cluster; `pipeline.pack._build` drives it.

    Args:
        tmp: pack's temp output folder (the staging area goes inside it).
        sources: the opened inputs (readers.InputSource).
        input_ids: their identities (lines or rows) as the driver read them.
        cfg: pack options; `cfg.ray` is the address.
        tokenizer_files: the tokenizer folder's file hashes (the fingerprint's), checked on every node.
    """

    def __init__(self, tmp: Path, sources: list[Any], input_ids: list[dict], cfg: Any,
                 tokenizer_files: dict[str, str] | None):
        from pipeline.fingerprint import tokenizer_files_identity

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
        """Encode every row on the cluster; return what `pack_encode.encode_all` returns (lengths in input
        order, drop counts, the first 20 drops, audit counts) and write stats.parquet's parts."""
        import ray.data

        from pipeline.pack_encode import AUDIT_TOTALS
        from pipeline.progress import progress_bar

        cpus = _cluster_cpus()
        total = sum(os.path.getsize(f) for source in self.sources for f in source.files)
        range_bytes = int(min(RANGE_BYTES, max(MIN_RANGE_BYTES, total // (4 * cpus) + 1)))
        self.ranges = byte_ranges(self.sources, range_bytes)
        if not self.ranges:
            return np.zeros(0, np.int64), {}, [], dict.fromkeys(AUDIT_TOTALS, 0)
        counted = ray.data.from_items(self.ranges, override_num_blocks=len(self.ranges)).map(_count_newlines)
        newlines = {row["range"]: row["newlines"] for row in _run_dataset(counted.iter_rows())}
        before: dict[str, int] = {}
        for spec in self.ranges:  # a range's first line number: 1 + newlines in the same file before it
            spec["first_line"] = before.get(spec["path"], 0) + 1
            before[spec["path"]] = before.get(spec["path"], 0) + newlines[spec["range"]]
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
            for row in _run_dataset(encoded.iter_rows()):
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

        from pipeline.pack_rows import shard_ranges
        from pipeline.progress import progress_bar
        from pipeline.shards import shard_name

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
            dataset = ray.data.from_items(parts, override_num_blocks=len(parts)).map(_write_part, num_cpus=1)
            for row in _run_dataset(dataset.iter_rows()):
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
        """Remove the staging area (the folder's rename comes next, in pack)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def wait_for_cluster(address: str, cpus: int, timeout_s: float = 60.0) -> None:
    """Block until the cluster at `address` shows `cpus` CPUs (tests and benchmarks start nodes first)."""
    import ray

    connect(address)
    deadline = time.time() + timeout_s
    while ray.cluster_resources().get("CPU", 0) < cpus:
        if time.time() > deadline:
            raise SftpackError(f"--ray {address}: {ray.cluster_resources().get('CPU', 0)} CPUs after "
                               f"{timeout_s:.0f}s, expected {cpus}")
        time.sleep(0.5)
