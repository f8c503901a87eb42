"""Encoding for the pack stage: one input range per task, on whichever worker runs it.

    InputRange (io.ranges) ──InputSource.range_rows──> rows, in batches of batch_size
        ──first_reject (validate's checks)──> kept records
        ──masking.encode_batch (template, mask, tokenize)──> sequences ──_fit (max_length)──>
        staging/spill-RRRRRR.arrow (input_ids, labels, example_id) + staging/stats-RRRRRR.parquet
        (one entry per row) ──> the driver gets lengths, trained tokens, drop counts and audit counts

`EncodeRanges` is the step: set up once per worker (the tokenizer, the renderer, stop ids, the
checks), then one range per task, the same on a local worker and on a Ray node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from sftpack.store.arrays import list_array, numbers, strings
from sftpack.templates.masking import AUDIT_KEYS, IGNORE_INDEX
from sftpack.checks.messages import ROW_CHECKS, Check, control_token_check, first_reject

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

def max_token_chars(tokenizer) -> int:
    """The most characters one token of the vocabulary decodes to."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max(len(tokenizer.convert_tokens_to_string([token])) for token in vocab if token is not None)


def _check_rows(input_name: str, stem: str, rows: list, checks: list[Check]) -> tuple[list[tuple[int, dict]], list[dict[str, Any]]]:
    """One stats entry per row, and (entry index, conversation) for the rows validate would keep.

    A rejected row is dropped as `rejected_<rule>`, its rule and field kept for first_drops.
    """
    records, stats = [], []
    for number, record, error in rows:
        entry = {"example_id": f"{stem}:{number}", "source": None, "input": input_name, "line": number,
                 "turns": 0, "sequences": 0, "tokens": 0, "trained_tokens": 0, "truncated": False,
                 "dropped": None}
        reject = first_reject(record, error, checks)
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


@dataclass(frozen=True)
class Encoder:
    """What encoding reads for every batch, loaded once per worker (`Encoder.load`)."""

    cfg: PackConfig
    tokenizer: Any
    renderer: Any
    max_token_chars: int
    stop_ids: frozenset[int]
    checks: list[Check]
    """validate's checks but the template one (encoding renders every record anyway)."""

    @classmethod
    def load(cls, cfg: PackConfig, tokenizer: Any = None, renderer: Any = None) -> "Encoder":
        """The encoder for `cfg`, with its tokenizer and renderer (loaded here unless given)."""
        if tokenizer is None:
            tokenizer, renderer = cfg.load_renderer()
        stop_ids = frozenset(tokenizer.convert_tokens_to_ids(m) for m in renderer.stop_markers)
        return cls(cfg, tokenizer, renderer, max_token_chars(tokenizer), stop_ids,
                   list(ROW_CHECKS) + [control_token_check(tokenizer)])

    def encode(self, input_name: str, stem: str, rows: list) -> dict[str, Any]:
        """Check and encode one batch of rows (number, record, reader's error) from one input file.

        Returns the spill record batch (kept examples only), one stats entry per row and audit counts.
        """
        return encode_rows(self, input_name, stem, rows)


def encode_rows(enc: Encoder, input_name: str, stem: str, rows: list) -> dict[str, Any]:
    """Encoder.encode."""
    from sftpack.templates.masking import TemplateNotMaskable, encode_batch

    cfg = enc.cfg
    records, stats = _check_rows(input_name, stem, rows, enc.checks)
    max_chars = cfg.max_length * enc.max_token_chars if cfg.truncation == "drop" else None
    encoded = encode_batch(enc.renderer, enc.tokenizer, [r for _, r in records], cfg.mask_options(),
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
                without = sum(not _ends_with_stop(labels, enc.stop_ids) for _, labels in sequences)
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
    return list_array(offsets, numbers(values))


def _spill_batch(ids: list[np.ndarray], labels: list[np.ndarray], example_ids: list[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [_list_array(ids), _list_array(labels), strings(example_ids)], schema=SPILL_SCHEMA
    )


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
