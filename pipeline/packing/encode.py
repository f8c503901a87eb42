"""Encoding for the pack stage, one batch of rows at a time, in whichever process runs it.

    Batch (input name, example-id stem, rows) ──first_reject (validate's checks)──> kept records
        ──masking.encode_batch (template, mask, tokenize)──> sequences ──_fit (max_length)──>
        spill record batch (input_ids, labels, example_id) + one stats entry per row + audit counts

`set_worker_state` loads what `encode_lines` needs into this process once (the tokenizer, the
renderer, stop ids, the checks); pack's local run (`encode_all`, threads or forked processes) and
the Ray actors (pipeline/distributed/encode.py) both call it, so both encode the same way.
"""

from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa

from sftpack.templates.masking import AUDIT_KEYS, IGNORE_INDEX
from sftpack.checks.messages import ROW_CHECKS, Check, RowError, control_token_check, schema_errors
from sftpack.progress import progress_bar
from sftpack.io.readers import InputSource

if TYPE_CHECKING:
    from sftpack.packing.options import PackConfig


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

PER_EXAMPLE = tuple(k for k in AUDIT_KEYS if k not in ("split_conversations", "split_extra_tokens"))
"""Audit keys that count turns or spans; `<key>_examples` counts the examples they are in."""
AUDIT_TOTALS = AUDIT_KEYS + ("sequences_without_stop", "examples_without_trained_tokens") + \
    tuple(f"{key}_examples" for key in PER_EXAMPLE)
"""manifest totals.audit: what masking counted (pipeline/templates/masking.py AUDIT_KEYS) and the "will it
stop" audit: kept sequences (not truncated) whose last trained token is no stop marker, and
examples with no trained token (dropped)."""

_WORKER: dict[str, Any] = {}


def set_worker_state(cfg: PackConfig, tokenizer: Any, renderer: Any) -> None:
    """Load this process's encoding state: what `encode_lines` reads for every batch.

    Called once per process that encodes: pack's driver before it forks or starts threads (the
    workers inherit it) and each Ray encoding actor.

    Args:
        cfg: pack options.
        tokenizer: the loaded tokenizer (tokenizer.load_renderer).
        renderer: its chat template renderer.
    """
    stop_ids = frozenset(tokenizer.convert_tokens_to_ids(m) for m in renderer.stop_markers)
    # validate's checks but the template one (encoding renders every record anyway)
    checks = list(ROW_CHECKS) + [control_token_check(tokenizer)]
    _WORKER.update(cfg=cfg, tokenizer=tokenizer, renderer=renderer, max_token_chars=max_token_chars(tokenizer),
                   stop_ids=stop_ids, checks=checks)



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
            records.append((len(stats), {"messages": messages, "tools": record.get("tools"),
                                         "chat_template_kwargs": record.get("chat_template_kwargs")}))
        stats.append(entry)
    return records, stats


def encode_lines(batch: Batch) -> dict[str, Any]:
    """Check and encode one batch of rows from one input file.

    Returns the spill record batch (kept examples only) and one stats entry per row.
    """
    from sftpack.templates.masking import TemplateNotMaskable, encode_batch

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
            if example.chars:
                entry["chars"] = example.chars
            continue
        sequences = _fit(example, cfg, entry)
        if sequences:
            names = [entry["example_id"]] if len(sequences) == 1 else \
                [f"{entry['example_id']}#{k}" for k in range(1, len(sequences) + 1)]
            kept += [(name, ids, labels) for name, (ids, labels) in zip(names, sequences)]
            for key, value in example.audit.items():
                audit[key] = audit.get(key, 0) + value
                if value and key in PER_EXAMPLE:
                    audit[f"{key}_examples"] = audit.get(f"{key}_examples", 0) + 1
            if not entry["truncated"]:
                without = sum(not _ends_with_stop(labels, _WORKER["stop_ids"]) for _, labels in sequences)
                if without:
                    audit["sequences_without_stop"] = audit.get("sequences_without_stop", 0) + without
    ids_out, labels_out, kept_ids = [k[1] for k in kept], [k[2] for k in kept], [k[0] for k in kept]
    return {"spill": _spill_batch(ids_out, labels_out, kept_ids), "stats": stats, "audit": audit}


def _ends_with_stop(labels: np.ndarray, stop_ids: frozenset[int]) -> bool:
    trained = np.flatnonzero(labels != IGNORE_INDEX)
    return bool(trained.size) and int(labels[trained[-1]]) in stop_ids


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


def line_batches(sources: list[InputSource], batch_size: int) -> Iterator[Batch]:
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


def encode_all(sources: list[InputSource], cfg: PackConfig, spill_path: Path, stats_path: Path,
                total_lines: int) -> tuple[np.ndarray, dict[str, int], list[dict], dict[str, int]]:
    """Encode every line into the spill file; return sequence lengths, drop counts, first errors
    and the audit counts (AUDIT_TOTALS)."""
    import pyarrow.parquet as pq  # here, not at the top: a reused run never needs it (~60 ms with compute)
    lengths: list[int] = []
    dropped: dict[str, int] = {}
    first_errors: list[dict] = []
    audit = dict.fromkeys(AUDIT_TOTALS, 0)
    batches = line_batches(sources, cfg.batch_size)
    progress = progress_bar(total_lines, "pack: encode")
    with pa.OSFile(str(spill_path), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as spill, \
            pq.ParquetWriter(str(stats_path), STATS_SCHEMA) as stats_writer:
        if cfg.num_proc > 1:
            # fork: workers inherit the loaded tokenizer and renderer in _WORKER.
            pool = multiprocessing.get_context("fork").Pool(cfg.num_proc)
            results = pool.imap(encode_lines, batches, chunksize=1)
        elif cfg.threads > 1:
            pool = None
            results = _threaded_map(encode_lines, batches, cfg.threads)
        else:
            pool = None
            results = map(encode_lines, batches)
        try:
            for result in results:
                spill.write_batch(result["spill"])
                for key, value in result["audit"].items():
                    audit[key] += value
                lengths.extend(np.asarray(result["spill"].column("input_ids").value_lengths()).tolist())
                count_drops(result["stats"], dropped, first_errors)
                stats_writer.write_table(pa.Table.from_pylist(result["stats"], schema=STATS_SCHEMA))
                progress.update(len(result["stats"]))
        finally:
            progress.close()
            if pool is not None:
                pool.terminate()
    audit["examples_without_trained_tokens"] = dropped.get("no_trained_tokens", 0)
    return np.asarray(lengths, dtype=np.int64), dropped, first_errors, audit


def count_drops(stats: list[dict[str, Any]], dropped: dict[str, int], first: list[dict[str, Any]]) -> None:
    """Add one batch's dropped examples to the counts per reason and to the first 20 drops listed
    in the manifest (input, line, reason, message, and the validate rule when there is one; its
    length: `tokens` once tokenized, or `chars` for a too_long drop decided before tokenizing)."""
    for entry in stats:
        reason = entry["dropped"]
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            if len(first) < 20:
                length = {"tokens": entry["tokens"]} if entry["tokens"] else \
                    {"chars": entry["chars"]} if entry.get("chars") else {}
                first.append({"input": entry["input"], "line": entry["line"], "reason": reason,
                              "message": entry.get("error", reason)}
                             | ({"rule": entry["rule"]} if "rule" in entry else {}) | length)
