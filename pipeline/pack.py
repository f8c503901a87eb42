"""The pack stage: conversations -> packed Arrow shard folder named by fingerprint.

    inputs ──readers.open_input (any container and layout, streamed in batches)──> records
           ──validate's checks (schema, ROW_CHECKS, control tokens); a failing record is dropped
             as rejected_<rule>──> checked records
           ──encode (template, mask, tokenize; batched)──> spill.arrow (+ lengths in memory)
           ──best-fit-decreasing over lengths──> bins
           ──gather rows from the memory-mapped spill──> data-*.arrow, stats.parquet, manifest.json

Only lengths stay in memory for packing; token data goes to disk as it is produced. The
output folder `out_dir/<fingerprint>/` is built under a temp name and renamed when complete,
manifest last. Running again with the same inputs and options reuses it after checking every
shard's checksum; a corrupt folder is rebuilt.

Inputs are read as validate reads them (JSONL, .jsonl.gz/.zst, Parquet, a save_to_disk folder,
a cached dataset; messages, sharegpt or alpaca layout), and every record gets validate's checks
without the template one (encoding renders it anyway): pack never trusts its input, so a user
turn holding `<|im_end|>\n<|im_start|>assistant\n` is never packed as a real turn boundary. The
same data in any container or layout packs to the same input_ids and labels; the fingerprint
covers the input's bytes as stored plus how they were read (layout, column map, split).
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline import __version__
from pipeline.atomic import atomic_dir, remove_stale, write_json
from pipeline.errors import SftpackError
from pipeline.data_options import DEFAULT_MAX_LENGTH, data_values
from pipeline.data_options import problems as data_problems
from pipeline.masking import AUDIT_KEYS, IGNORE_INDEX, MaskOptions
from pipeline.messages import ROW_CHECKS, Check, RowError, control_token_check, schema_errors
from pipeline.fingerprint import file_identity, fingerprint, sha256_file, tokenizer_files_identity, tokenizer_identity
from pipeline.packing import lower_bound_rows, one_per_row, pack_bins
from pipeline.progress import progress_bar
from pipeline.readers import InputSource, ReadOptions
from pipeline.shards import (
    MANIFEST,
    ROW_SCHEMA,
    read_manifest,
    shard_name,
    verify_folder,
    write_dataset_metadata,
    write_shard,
)

# Bump when the bytes pack writes for the same inputs and options change meaning.
PACK_FORMAT_VERSION = 2  # 2: rows from pack_bins (BFD + local search)

SPILL_SCHEMA = pa.schema(
    [("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())), ("example_id", pa.string())]
)
STATS_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("source", pa.string()),
        ("input", pa.string()),
        ("line", pa.int64()),
        ("turns", pa.int32()),
        ("sequences", pa.int32()),
        ("tokens", pa.int32()),
        ("trained_tokens", pa.int32()),
        ("truncated", pa.bool_()),
        ("dropped", pa.string()),
    ]
)


@dataclass(frozen=True)
class PackConfig:
    tokenizer: str
    """Tokenizer folder (usually the model folder)."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Longest row in tokens; longer examples are dropped or truncated."""
    chat_template: str | None = None
    """Path to a Jinja chat template that replaces the tokenizer's own."""
    strategy: str = "bfd"
    """bfd: best-fit-decreasing packing; none: one example per row."""
    train_on: str = "all"
    """all: every assistant turn is trained; last: only the final one."""
    turns: str = "auto"
    """auto: a conversation whose template renders a turn unlike at inference is split into the
    fewest sequences that train every turn as the model writes it; whole: one sequence as rendered."""
    reasoning: str = "train"
    """Assistant reasoning: train (with the answer), mask (rendered, not trained), drop (removed)."""
    truncation: str = "drop"
    """Examples longer than max_length: drop (counted) or truncate (keep the start, counted)."""
    num_proc: int = 1
    """Encoding processes; the output is identical for any value."""
    threads: int = 2
    """Encoding threads when num_proc is 1: while one is inside the Rust tokenizer (which releases
    the GIL) the other renders the next batch, so tokenizing overlaps templating on a second core;
    1 is strictly serial. The output is identical for any value."""
    batch_size: int = 512
    """Conversations per tokenizer call."""
    shard_tokens: int = 32_000_000
    """Tokens per shard file (about 256 MB of ids and labels)."""
    ray: str | None = None
    """Encode and write on a Ray cluster (pipeline/distributed.py): local, auto, HOST:PORT or
    ray://HOST:PORT; None runs here. The output is identical either way."""

    def __post_init__(self) -> None:
        problems = data_problems(dataclasses.asdict(self))
        if self.num_proc < 1 or self.threads < 1 or self.batch_size < 1 or self.shard_tokens < 1:
            problems.append("num_proc, threads, batch_size and shard_tokens must be positive")
        if problems:
            raise SftpackError("pack options: " + "; ".join(problems))

    @classmethod
    def from_run_config(cls, run_config: Any, **overrides: Any) -> "PackConfig":
        """The pack options a run config implies (model.name_or_path, data.*), then `overrides`."""
        return cls(**data_values(run_config, {"ray": run_config.data.ray} | overrides))

    def mask_options(self) -> MaskOptions:
        """The options that decide which tokens are trained."""
        return MaskOptions(self.train_on, self.turns, self.reasoning)

    def output_options(self) -> dict[str, Any]:
        """The options that change the output (num_proc, threads, batch_size and ray do not)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("num_proc", "threads", "batch_size", "tokenizer", "ray")}


# ---------------------------------------------------------------- encoding (per process)

AUDIT_TOTALS = AUDIT_KEYS + ("sequences_without_stop", "examples_without_trained_tokens")
"""manifest totals.audit: what masking counted (pipeline/masking.py AUDIT_KEYS) and the "will it
stop" audit: kept sequences (not truncated) whose last trained token is no stop marker, and
examples with no trained token (dropped)."""

_WORKER: dict[str, Any] = {}


def max_token_chars(tokenizer) -> int:
    """The most characters one token of the vocabulary decodes to."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max(len(tokenizer.convert_tokens_to_string([token])) for token in vocab if token is not None)


Batch = tuple[str, str, list[tuple[int, "dict | None", "RowError | None"]]]
"""(input file name, example-id stem, [(line or row number, record in messages form, reader's error)])."""


def first_reject(record: dict | None, error: RowError | None, checks: list[Check]) -> RowError | None:
    """The first problem validate would report for one record, or None when validate keeps it.

    The same layers in the same order as validate's `check_row` (the reader's parse or conversion
    error, the JSON Schema, then `checks`), stopping at the first error: pack and report count a
    record once, under its first rule.

    Args:
        record: the record in messages form; None when it could not be read or converted.
        error: the reader's error for it (`Row.error`), if any.
        checks: conversation checks for a schema-valid record, in order (ROW_CHECKS, then
            control_token_check for the tokenizer in use).

    Returns:
        The first RowError, or None.
    """
    if error is not None:
        return error
    errors = schema_errors(record)  # the fast path decides almost every row; jsonschema only for bad ones
    if errors:
        return errors[0]
    for check in checks:
        for found in check(record):
            return found
    return None


def _check_rows(input_name: str, stem: str, rows: list) -> tuple[list[tuple[int, dict]], list[dict[str, Any]]]:
    """One stats entry per row, and (entry index, conversation) for the rows validate would keep.

    A rejected row is dropped as `rejected_<rule>`, its rule and field kept for first_drops.
    """
    records, stats = [], []
    for number, record, error in rows:
        entry = {"example_id": f"{stem}:{number}", "source": None, "input": input_name, "line": number,
                 "turns": 0, "sequences": 0, "tokens": 0, "trained_tokens": 0, "truncated": False,
                 "dropped": None}
        reject = first_reject(record, error, _WORKER["checks"])
        if reject is not None:
            entry.update(dropped=f"rejected_{reject.rule}", rule=reject.rule,
                         error=f"{reject.path or '(line)'}: {reject.message}")
        else:
            messages = record["messages"]
            entry["example_id"] = str(record.get("id", entry["example_id"]))
            entry["source"] = None if record.get("source") is None else str(record["source"])
            entry["turns"] = len(messages)
            records.append((len(stats), {"messages": messages, "tools": record.get("tools")}))
        stats.append(entry)
    return records, stats


def _encode_lines(batch: Batch) -> dict[str, Any]:
    """Check and encode one batch of rows from one input file.

    Returns the spill record batch (kept examples only) and one stats entry per row.
    """
    from pipeline.masking import TemplateNotMaskable, encode_batch

    cfg: PackConfig = _WORKER["cfg"]
    input_name, stem, rows = batch
    records, stats = _check_rows(input_name, stem, rows)

    max_chars = cfg.max_length * _WORKER["max_token_chars"] if cfg.truncation == "drop" else None
    encoded = encode_batch(_WORKER["renderer"], _WORKER["tokenizer"], [r for _, r in records], cfg.mask_options(),
                           max_chars=max_chars)
    kept: list[tuple[str, np.ndarray, np.ndarray]] = []
    audit: dict[str, int] = {}
    for (stat_index, _), example in zip(records, encoded):
        entry = stats[stat_index]
        if example.reason == "template_not_maskable":  # a template problem, not a data problem
            raise TemplateNotMaskable(f"{input_name}:{entry['line']}: {example.error}")
        if example.error:  # template_error, or too_long before tokenizing (tokens stays 0)
            entry["dropped"] = example.reason
            entry["error"] = example.error
            continue
        sequences = _fit(example, cfg, entry)
        if sequences:
            names = [entry["example_id"]] if len(sequences) == 1 else \
                [f"{entry['example_id']}#{k}" for k in range(1, len(sequences) + 1)]
            kept += [(name, ids, labels) for name, (ids, labels) in zip(names, sequences)]
            for key, value in example.audit.items():
                audit[key] = audit.get(key, 0) + value
            if not entry["truncated"]:
                without = sum(not _ends_with_stop(labels, _WORKER["stop_ids"]) for _, labels in sequences)
                if without:
                    audit["sequences_without_stop"] = audit.get("sequences_without_stop", 0) + without
    ids_out, labels_out, kept_ids = [k[1] for k in kept], [k[2] for k in kept], [k[0] for k in kept]
    return {"spill": _spill_batch(ids_out, labels_out, kept_ids), "stats": stats, "audit": audit}


def _ends_with_stop(labels: np.ndarray, stop_ids: np.ndarray) -> bool:
    trained = labels[labels != IGNORE_INDEX]
    return bool(trained.size) and bool(np.isin(trained[-1], stop_ids))


def _fit(example: Any, cfg: PackConfig, entry: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The example's sequences cut to max_length (truncate) or none (drop), with `entry` counted:
    tokens and trained tokens over its sequences, the number of sequences, truncated, dropped."""
    sequences = [(s.input_ids, s.labels) for s in example.sequences]
    entry["tokens"] = sum(int(ids.size) for ids, _ in sequences)
    entry["trained_tokens"] = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in sequences)
    entry["sequences"] = len(sequences)
    if any(ids.size > cfg.max_length for ids, _ in sequences):
        if cfg.truncation == "drop":
            entry["dropped"] = "too_long"
            return []
        sequences = [(ids[: cfg.max_length], labels[: cfg.max_length]) for ids, labels in sequences]
        entry["truncated"] = True  # unless nothing trained is left (below)
        entry["tokens"] = sum(int(ids.size) for ids, _ in sequences)
        entry["trained_tokens"] = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in sequences)
    if entry["trained_tokens"] == 0:
        entry["dropped"], entry["truncated"] = "no_trained_tokens", False
        return []
    return sequences


def _list_array(arrays: list[np.ndarray]) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _spill_batch(ids: list[np.ndarray], labels: list[np.ndarray], example_ids: list[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [_list_array(ids), _list_array(labels), pa.array(example_ids, pa.string())], schema=SPILL_SCHEMA
    )


def _line_batches(sources: list[InputSource], batch_size: int) -> Iterator[Batch]:
    """Stream every input's rows (readers: parsed and converted to messages form) in batches.

    Blank lines are skipped. A batch names one file: the reader's batches of a folder or glob
    may span two files, so they are split there (batch sizes do not change the output).

    Args:
        sources: the opened inputs, in order.
        batch_size: rows per batch at most.

    Returns:
        An iterator of Batch.
    """
    for source in sources:
        for rows in source.batches(batch_size):
            for label, group in itertools.groupby(rows, key=lambda row: row.file):
                yield label, example_stem(source, label), [(row.number, row.record, row.error) for row in group]


def example_stem(source: InputSource, label: str) -> str:
    """What names an example without an id, before `:line`: `x` for x.jsonl (x:12, as pack has
    always named them); a file of a folder or glob is named under it (data/part-0:12), so ids
    stay unique across its files."""
    if len(source.files) <= 1:
        return source.stem
    return f"{source.stem}/{label.split('.', 1)[0]}"


def _is_plain(source: InputSource) -> bool:
    """A single messages JSONL file read as it is: identified and fingerprinted as pack always did."""
    return source.container == "jsonl" and source.verbatim


def input_identity(source: InputSource) -> dict[str, Any]:
    """What a manifest records for one input.

    Args:
        source: the opened input.

    Returns:
        fingerprint.file_identity of a plain messages JSONL file (what pack has always recorded),
        else `InputSource.identity()`: sha256 of the bytes as stored, lines or rows, container,
        layout, column map and split.
    """
    return file_identity(source.files[0]) if _is_plain(source) else source.identity()


def _fingerprint_input(source: InputSource, identity: dict[str, Any]) -> dict[str, Any]:
    # A plain JSONL file keeps its old entry, so folders packed before stay reused. Anything else
    # adds how it was read: the same bytes read with another layout, column map or split give
    # other records. The stem names examples without an id, so it stands in for the file name.
    if _is_plain(source):
        return {"name": source.files[0].name, "sha256": identity["sha256"]}
    reading = {key: identity.get(key) for key in ("container", "layout", "columns", "split")}
    return {"name": source.stem, "sha256": identity["sha256"]} | reading


def _open_sources(inputs: list[str | Path], read: ReadOptions) -> list[InputSource]:
    """Open every input (readers.open_input); collect every problem and raise once (exit 2)."""
    if not inputs:
        raise SftpackError("pack: no input files given")
    sources, problems = [], []
    for spec in inputs:
        try:
            sources.append(read.open(spec))
        except SftpackError as err:
            problems.append(str(err))
    if problems:
        raise SftpackError("\n".join(problems))
    return sources


def _threaded_map(fn, items: Iterator, threads: int) -> Iterator:
    """map(fn, items) on `threads` threads, results in order, at most `threads` items in flight
    (Executor.map would read every batch first)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="sftpack-encode") as executor:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(executor.submit(fn, item))
                if len(pending) >= threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _encode_all(sources: list[InputSource], cfg: PackConfig, spill_path: Path, stats_path: Path,
                total_lines: int) -> tuple[np.ndarray, dict[str, int], list[dict], dict[str, int]]:
    """Encode every line into the spill file; return sequence lengths, drop counts, first errors
    and the audit counts (AUDIT_TOTALS)."""
    import pyarrow.parquet as pq  # here, not at the top: a reused run never needs it (~60 ms with compute)
    lengths: list[int] = []
    dropped: dict[str, int] = {}
    first_errors: list[dict] = []
    audit = dict.fromkeys(AUDIT_TOTALS, 0)
    batches = _line_batches(sources, cfg.batch_size)
    progress = progress_bar(total_lines, "pack: encode")
    with pa.OSFile(str(spill_path), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as spill, \
            pq.ParquetWriter(str(stats_path), STATS_SCHEMA) as stats_writer:
        if cfg.num_proc > 1:
            # fork: workers inherit the loaded tokenizer and renderer in _WORKER.
            pool = multiprocessing.get_context("fork").Pool(cfg.num_proc)
            results = pool.imap(_encode_lines, batches, chunksize=1)
        elif cfg.threads > 1:
            pool = None
            results = _threaded_map(_encode_lines, batches, cfg.threads)
        else:
            pool = None
            results = map(_encode_lines, batches)
        try:
            for result in results:
                spill.write_batch(result["spill"])
                for key, value in result["audit"].items():
                    audit[key] += value
                lengths.extend(np.asarray(result["spill"].column("input_ids").value_lengths()).tolist())
                for entry in result["stats"]:
                    reason = entry["dropped"]
                    if reason:
                        dropped[reason] = dropped.get(reason, 0) + 1
                        if len(first_errors) < 20:
                            first_errors.append({"input": entry["input"], "line": entry["line"], "reason": reason,
                                                 "message": entry.get("error", reason)}
                                                | ({"rule": entry["rule"]} if "rule" in entry else {}))
                stats_writer.write_table(pa.Table.from_pylist(result["stats"], schema=STATS_SCHEMA))
                progress.update(len(result["stats"]))
        finally:
            progress.close()
            if pool is not None:
                pool.terminate()
    audit["examples_without_trained_tokens"] = dropped.get("no_trained_tokens", 0)
    return np.asarray(lengths, dtype=np.int64), dropped, first_errors, audit


# ---------------------------------------------------------------- rows and shards

def _row_batches(spill: pa.Table, bins: list[list[int]], rows: range, chunk_rows: int = 2048) -> Iterator[pa.RecordBatch]:
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


def _shard_ranges(row_tokens: np.ndarray, shard_tokens: int) -> list[range]:
    """Split rows into consecutive shards of about `shard_tokens` tokens (at least one row)."""
    ranges, start, total = [], 0, 0
    for index, tokens in enumerate(row_tokens.tolist()):
        if total and total + tokens > shard_tokens:
            ranges.append(range(start, index))
            start, total = index, 0
        total += tokens
    ranges.append(range(start, len(row_tokens)))
    return ranges


def _write_shards(folder: Path, spill_path: Path, bins: list[list[int]], lengths: np.ndarray,
                  cfg: PackConfig) -> list[dict[str, Any]]:
    with pa.memory_map(str(spill_path)) as source:
        spill = pa.ipc.open_file(source).read_all()
        row_tokens = np.fromiter((lengths[row].sum() for row in bins), dtype=np.int64, count=len(bins))
        ranges = _shard_ranges(row_tokens, cfg.shard_tokens) if bins else [range(0)]
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

            sha = write_shard(folder / name, counted(_row_batches(spill, bins, rows)))
            shards.append({"file": name, "sha256": sha, "rows": len(rows),
                           "tokens": int(row_tokens[rows.start:rows.stop].sum()), "trained_tokens": trained})
        progress.close()
    return shards


# ---------------------------------------------------------------- the stage

def _fingerprint_of(sources: list[InputSource], cfg: PackConfig) -> tuple[str, list[dict], dict[str, str]]:
    """The packed folder's fingerprint, the inputs' identities and the tokenizer files' hashes.

    Reuse is decided from file hashes alone: the tokenizer folder's files and the override
    template stand in for the loaded tokenizer, so a reused run loads neither transformers nor
    the template (the full tokenizer identity is still recorded in the manifest at build time).

    Raises:
        SftpackError: no tokenizer folder, or no template file where one is named.
    """
    tokenizer_path = Path(cfg.tokenizer)
    if not tokenizer_path.is_dir():
        raise SftpackError(f"{tokenizer_path}: tokenizer folder not found (--tokenizer)")
    template_sha = None
    if cfg.chat_template:
        if not Path(cfg.chat_template).is_file():
            raise SftpackError(f"{cfg.chat_template}: chat template file not found")
        template_sha = sha256_file(cfg.chat_template)
    input_ids = [input_identity(source) for source in sources]
    tokenizer_files = tokenizer_files_identity(tokenizer_path)
    fp = fingerprint({
        "format": PACK_FORMAT_VERSION,
        "inputs": [_fingerprint_input(source, i) for source, i in zip(sources, input_ids)],
        "tokenizer_files": tokenizer_files,
        "options": cfg.output_options() | {"chat_template": template_sha},
    })
    return fp, input_ids, tokenizer_files


def run(inputs: list[str | Path], out_dir: str | Path, cfg: PackConfig,
        read: ReadOptions | None = None) -> dict[str, Any]:
    """Pack `inputs` into `out_dir/<fingerprint>/`, or reuse that folder when sound.

    Args:
        inputs: files, folders, globs or dataset names in any layout (readers.open_input);
            usually the validate stage's output. Records validate would reject are dropped.
        out_dir: parent folder of packed folders.
        cfg: pack options.
        read: how inputs are read (layout, split, column map); auto-detected layout by default.

    Returns:
        The manifest, with `path` (the packed folder) and `reused` added.

    Raises:
        SftpackError: missing or unreadable input, unusable tokenizer or template, nothing left to pack.
    """
    started = time.time()
    sources = _open_sources(list(inputs), read or ReadOptions())
    out_dir = Path(out_dir)
    fp, input_ids, tokenizer_files = _fingerprint_of(sources, cfg)
    folder = out_dir / fp
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SftpackError(f"{out_dir}: cannot create output folder: {err.strerror}") from None
    remove_stale(out_dir)
    if read_manifest(folder) is not None:
        problems = verify_folder(folder)
        if not problems:
            manifest = read_manifest(folder)
            return {**manifest, "path": str(folder), "reused": True}
        print(f"pack: {folder} failed verification, rebuilding: {problems[0]}", file=sys.stderr)

    from pipeline.tokenizer import load_renderer

    tokenizer, renderer = load_renderer(cfg.tokenizer, cfg.chat_template)
    identity = tokenizer_identity(tokenizer, renderer.template) | {"files_sha256": tokenizer_files}
    stop_ids = np.array([tokenizer.convert_tokens_to_ids(m) for m in renderer.stop_markers], dtype=np.int32)
    # validate's checks but the template one (encoding renders every record anyway); built once here,
    # forked workers inherit them
    checks = list(ROW_CHECKS) + [control_token_check(tokenizer)]
    _WORKER.update(cfg=cfg, tokenizer=tokenizer, renderer=renderer, max_token_chars=max_token_chars(tokenizer),
                   stop_ids=stop_ids, checks=checks)
    try:
        manifest = _build(folder, sources, input_ids, identity, fp, cfg, started, tokenizer_files)
    except OSError as err:  # disk full, file size limit, permissions: nothing is left behind
        raise SftpackError(f"{folder}: writing the packed folder failed: {err.strerror or err} "
                           f"({err.filename or 'shard data'}); free space or choose another --out-dir",
                           exit_code=1) from None
    return {**manifest, "path": str(folder), "reused": False}


def _build(folder: Path, sources: list[InputSource], input_ids: list[dict], identity: dict, fp: str,
           cfg: PackConfig, started: float, tokenizer_files: dict | None = None) -> dict[str, Any]:
    """Encode, pack and write the folder under a temp name; rename it into place last."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with atomic_dir(folder) as tmp:
        spill_path = tmp / ".spill.arrow"
        if cfg.ray:  # encode and write on a Ray cluster, the same bytes (pipeline/distributed.py)
            from pipeline.distributed import RayPack

            cluster = RayPack(tmp, sources, input_ids, cfg, tokenizer_files)
            engine = cluster.engine
            lengths, dropped, first_errors, audit = cluster.encode()
        else:
            engine = {"name": "local", "num_proc": cfg.num_proc, "threads": cfg.threads}
            lengths, dropped, first_errors, audit = _encode_all(
                sources, cfg, spill_path, tmp / "stats.parquet",
                sum(i.get("lines", i.get("rows", 0)) for i in input_ids))
        if lengths.size == 0:
            raise SftpackError(f"pack: no example left to pack; drop reasons: {dropped or 'no input lines'}; "
                               f"first: {first_errors[:3]}")
        bins = pack_bins(lengths, cfg.max_length) if cfg.strategy == "bfd" else one_per_row(lengths)
        if cfg.ray:
            shards = cluster.write_shards(bins, lengths)
            cluster.close()
        else:
            shards = _write_shards(tmp, spill_path, bins, lengths, cfg)
            spill_path.unlink()
        write_dataset_metadata(tmp, [s["file"] for s in shards], fp)
        stats = pq.read_table(tmp / "stats.parquet", columns=["truncated", "dropped"])
        tokens = int(lengths.sum())
        trained = sum(s["trained_tokens"] for s in shards)
        rows = len(bins)
        manifest = {
            "fingerprint": fp,
            "sftpack_version": __version__,
            "pack_format": PACK_FORMAT_VERSION,
            "created_unix": int(time.time()),
            "inputs": input_ids,
            "tokenizer": identity,
            "options": dataclasses.asdict(cfg),
            "engine": engine,  # information only: not in the fingerprint, the output is the same
            "shards": shards,
            "totals": {
                "examples_read": stats.num_rows,
                "examples_packed": int(pc.sum(pc.is_null(stats.column("dropped"))).as_py() or 0),
                "sequences_packed": int(lengths.size),
                "dropped": dict(sorted(dropped.items())),
                "truncated": int(pc.sum(stats.column("truncated")).as_py() or 0),
                "rows": rows,
                "tokens": tokens,
                "trained_tokens": trained,
                "trained_share": round(trained / tokens, 6),
                "capacity": rows * cfg.max_length,
                "packing_efficiency": round(tokens / (rows * cfg.max_length), 6),
                "lower_bound_rows": lower_bound_rows(tokens, cfg.max_length),
                "audit": audit,
            },
            "first_drops": first_errors,
            "seconds": round(time.time() - started, 3),
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest


def audit_warnings(audit: dict[str, int]) -> list[str]:
    """One sentence per audit count that needs a user's attention, each with a fix."""
    fixes = {
        "reasoning_not_rendered": "assistant turns carry reasoning the chat template does not render, so it is not "
                                  "trained; use a template that renders reasoning_content, or --reasoning drop to say so",
        "tool_calls_not_rendered": "assistant turns call tools the chat template does not render; they are left "
                                   "untrained; use a template that renders tool_calls (--chat-template)",
        "turns_rendered_differently": "assistant turns are trained as the full conversation renders them, not as the "
                                      "model writes them at inference (--turns whole); --turns auto splits them",
        "turns_without_stop": "trained turns end in no stop marker the tokenizer knows: the model may not learn "
                              "to stop; check the template's end-of-turn token",
        "sequences_without_stop": "sequences' last trained token is not a stop token: the model may not learn to "
                                  "stop; check the template's end-of-turn token",
        "spans_with_role_header": "trained spans hold a user or system role header: the template's turns cannot be "
                                  "told apart; check the template",
    }
    return [f"{audit[key]} {text}" for key, text in fixes.items() if audit.get(key)]
