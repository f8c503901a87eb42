"""Validate's work on one input range: every row checked, kept lines and rejects written to the
range's staged parts, and what the driver merges (counts, the first warnings and rejects, and a
conversation hash per kept row for the duplicate warning).

    InputRange ──InputSource.range_rows (blank lines too)──> Row ──check_row (parse, schema, ROW_CHECKS,
        tokenizer checks)──> staging/kept-RRRRRR (valid lines, bytes unchanged) | staging/rejects-RRRRRR
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sftpack.checks.conversation_key import conversation_hash
from sftpack.checks.messages import ROW_CHECKS, Check, schema_errors, tokenizer_checks
from sftpack.execution import Step
from sftpack.execution.cluster import Staging, atomic_path, check_input
from sftpack.io.ranges import InputRange
from sftpack.io.readers import InputSource, Row, provenance_line
from sftpack.records import RowError


class _Warnings:
    """Counts per warning kind and the first few examples of each."""

    def __init__(self, examples: int):
        self.examples = examples
        self.counts: Counter[str] = Counter()
        self.first: dict[str, list[dict[str, Any]]] = {"blank": [], "duplicate": [], "long_turn": []}

    def add(self, kind: str, **entry: Any) -> None:
        self.counts[kind] += 1
        if len(self.first[kind]) < self.examples:
            self.first[kind].append(entry)

    def as_dict(self) -> dict[str, Any]:
        return {kind: {"count": self.counts[kind], "first": first} for kind, first in self.first.items()}


def _where(row: Row, verbatim: bool) -> dict[str, Any]:
    """Where a row is, in rejects and warnings: its line for messages JSONL, else its file and row."""
    return {"line": row.number} if verbatim else {"input": row.file, "row": row.number}


def check_row(row: Row, verbatim: bool, checks: list[Check], max_errors: int) -> tuple[bytes | None, list[RowError]]:
    """The line to keep for one non-blank row, or why it is rejected.

    Args:
        row: from `InputSource.batches`.
        verbatim: keep the row's own bytes (messages JSONL); else write it normalised with its
            `input` and `row` (readers.provenance_line).
        checks: conversation checks run on a schema-valid record, in order.
        max_errors: errors kept; the rest are summed up in one `too_many_errors` entry.

    Returns:
        (line ending in a newline, []) or (None, errors).
    """
    if row.error:
        return None, [row.error]
    if verbatim:
        out = row.raw if row.raw.endswith(b"\n") else row.raw + b"\n"  # a last line without newline gets one
    else:
        out, error = provenance_line(row)
        if error:
            return None, [error]
    # Layers 2 and 3 of messages.classify_line on the record the reader already parsed (and converted):
    # the same rules and messages, without parsing each line twice.
    errors = schema_errors(row.record)
    if not errors:
        for check in checks:
            errors.extend(check(row.record))
    if len(errors) > max_errors:
        extra = len(errors) - max_errors
        errors = errors[:max_errors] + [RowError("", "too_many_errors", f"{extra} more errors not shown")]
    return (None, errors) if errors else (out, [])


def _reject_line(row: Row, entry: dict[str, Any]) -> bytes:
    # A JSONL row quotes its line as read; another row quotes its record as read (before conversion).
    if row.raw is not None:
        quoted = {"raw": row.raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")}
    else:
        quoted = {"record": row.original}
    return (json.dumps(entry | quoted, ensure_ascii=False, default=str) + "\n").encode("utf-8")


class Tally:
    """What validate counts while streaming: counts, warnings, the first rejects, duplicate hashes."""

    def __init__(self, cfg: ValidateConfig, verbatim: bool):
        self.cfg, self.verbatim = cfg, verbatim
        self.counts: Counter[str] = Counter()
        self.warnings = _Warnings(cfg.examples)
        self.first_rejects: list[dict[str, Any]] = []
        self.digests = {"kept": hashlib.sha256(), "rejects": hashlib.sha256()}
        self.keys: list[tuple[int, int]] = []  # (8-byte conversation hash, line or row) per kept row

    def reject(self, row: Row, errors: list[RowError]) -> bytes:
        self.counts["rejected"] += 1
        self.counts.update(f"rejected_{rule}" for rule in dict.fromkeys(e.rule for e in errors))
        entry = _where(row, self.verbatim) | {"errors": [e.as_dict() for e in errors]}
        if len(self.first_rejects) < self.cfg.examples:
            self.first_rejects.append(entry)
        out = _reject_line(row, entry)
        self.digests["rejects"].update(out)
        return out

    def keep(self, row: Row, out: bytes) -> None:
        # Runs for every kept row: where it is (a dict) is built only for a warning. Duplicates are
        # found by the driver, over every range of the input in order (`merge`).
        self.counts["kept"] += 1
        self.digests["kept"].update(out)
        self.keys.append((conversation_hash(row.record), row.number))
        messages = row.record["messages"]
        if max([len(m["content"]) for m in messages], default=0) > self.cfg.max_turn_chars:
            for i, message in enumerate(messages):
                if len(message["content"]) > self.cfg.max_turn_chars:
                    self.warnings.add("long_turn", **_where(row, self.verbatim), path=f"/messages/{i}/content",
                                      chars=len(message["content"]))


class CheckRanges(Step):
    """Check one input range per task into staged parts (kept lines, rejects); return its tally.

    Args:
        cfg: validate's options (a ValidateConfig; tokenizer and template paths absolute).
        sources: the opened inputs the ranges belong to.
        staging: the staging folder.
        loaded: (tokenizer, renderer) the driver loaded already (never pickled: a Ray node loads its own).
    """

    def __init__(self, cfg: Any, sources: list[InputSource], staging: Staging, loaded: tuple[Any, Any] | None = None):
        self.cfg, self.sources, self.staging, self.loaded = cfg, sources, staging, loaded
        self.checks: list[Check] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"loaded": None, "checks": None}

    def setup(self) -> None:
        if self.checks is not None:
            return
        loaded = self.loaded
        if self.cfg.tokenizer and loaded is None:
            self.staging.check()
            loaded = self.cfg.load_renderer()
        self.checks = list(ROW_CHECKS) + (tokenizer_checks(*loaded) if self.cfg.tokenizer else [])

    def units(self, task: InputRange, result: dict[str, Any]) -> int:
        return result["progress"]

    def run(self, task: InputRange) -> dict[str, Any]:
        self.staging.check()
        if task.path:
            check_input(task.path, task.size)
        source = self.sources[task.source]
        by_bytes = source.progress_in_bytes
        tally = Tally(self.cfg, source.verbatim)
        parts = {kind: self.staging.file(f"{kind}-{task.index:06d}") for kind in ("kept", "rejects")}
        temps = {kind: atomic_path(path) for kind, path in parts.items()}
        progress = 0
        try:
            with open(temps["kept"], "wb") as kept, open(temps["rejects"], "wb") as rejects:
                for row in source.range_rows(task, blanks=True):
                    progress += len(row.raw) if by_bytes else 1
                    tally.counts["read"] += 1
                    if row.blank:
                        tally.counts["blank"] += 1
                        tally.warnings.add("blank", **_where(row, tally.verbatim))
                        continue
                    out, errors = check_row(row, tally.verbatim, self.checks, self.cfg.max_errors_per_line)
                    if errors:
                        rejects.write(tally.reject(row, errors))
                    else:
                        kept.write(out)
                        tally.keep(row, out)
                for handle in (kept, rejects):  # a single part becomes the output as it is (renamed)
                    handle.flush()
                    os.fsync(handle.fileno())
            for kind in parts:
                os.replace(temps[kind], parts[kind])
        finally:
            for path in temps.values():
                path.unlink(missing_ok=True)
        return {"counts": dict(tally.counts), "warnings": tally.warnings.first,
                "warning_counts": dict(tally.warnings.counts),
                "first_rejects": tally.first_rejects, "keys": np.array(tally.keys, dtype=np.int64).reshape(-1, 2),
                "sha256": {kind: digest.hexdigest() for kind, digest in tally.digests.items()},
                "progress": progress, "file": task.label}


def merge(cfg: Any, verbatim: bool, parts: list[dict[str, Any]]) -> "Tally":
    """One input's tally from its ranges' results, in order: counts, the first warnings and rejects,
    and the duplicate warnings, found here over every kept row in input order."""
    tally = Tally(cfg, verbatim)
    for part in parts:
        tally.counts.update(part["counts"])
        for kind, entries in part["warnings"].items():
            tally.warnings.counts[kind] += part["warning_counts"].get(kind, 0)
            room = tally.warnings.examples - len(tally.warnings.first[kind])
            tally.warnings.first[kind] += entries[:max(0, room)]
        tally.first_rejects += part["first_rejects"][:max(0, cfg.examples - len(tally.first_rejects))]
    _duplicates(tally, verbatim, parts)
    return tally


def _duplicates(tally: Tally, verbatim: bool, parts: list[dict[str, Any]]) -> None:
    """Every kept row whose conversation hash an earlier row has is a duplicate of that first row
    (vectorised: one np.unique over the input's hashes; only the first few become entries)."""
    keys = np.concatenate([part["keys"] for part in parts]) if parts else np.zeros((0, 2), np.int64)
    owner = np.repeat(np.arange(len(parts)), [len(part["keys"]) for part in parts])
    _, first, inverse = np.unique(keys[:, 0], return_index=True, return_inverse=True)
    seen_before = first[inverse]
    duplicates = np.flatnonzero(seen_before != np.arange(len(keys)))
    tally.warnings.counts["duplicate"] += int(duplicates.size)

    def where(row: int) -> Any:  # a converted row is named as readers.Row.where() names it
        return int(keys[row, 1]) if verbatim else f"{parts[owner[row]]['file']}:{int(keys[row, 1])}"

    for row in duplicates[:tally.warnings.examples].tolist():
        line = int(keys[row, 1])
        place = {"line": line} if verbatim else {"input": parts[owner[row]]["file"], "row": line}
        tally.warnings.first["duplicate"].append(place | {"repeats": where(int(seen_before[row]))})
