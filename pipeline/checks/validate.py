"""The validate stage: conversations in any container and layout -> valid lines, rejects with reasons, and counts.

Inputs are read through `sftpack.io.readers.open_input` (JSONL, .jsonl.gz, .jsonl.zst, Parquet, a
save_to_disk folder, a cached dataset; messages, sharegpt or alpaca layout). For each input `x.jsonl`
in messages layout, streaming line by line in binary (memory holds one line plus an 8-byte hash per
kept line for the duplicate warning):

    x.jsonl --check_row (parse, schema, ROW_CHECKS, tokenizer checks)------+--> DIR/x.jsonl          valid lines, bytes unchanged
                                                                           +--> DIR/x.rejects.jsonl  {line, errors, raw}
                                           counts, warnings, hashes -------+--> DIR/x.validate.json  manifest, written last

Any other input (another container, or another layout) is converted to messages form by the
reader; its kept records are written as normalised messages JSONL, each line ending with two
keys saying where it came from, `"input"` (the file, relative to the input) and `"row"` (its line
or row there), which the messages schema allows as metadata (a sidecar mapping would be one more
file to keep in step). Its rejects carry `input` and `row` instead of `line`, and the record as
read; rows that could not be converted are rejected with the reader's rule (`convert_role`, ...),
and a record that already has an `input` or `row` key with `reserved_key` (never overwritten).

Every line is accounted for: kept + rejected + blank = read. Blank lines are counted and
listed in the manifest, never written. Warnings (exact duplicate conversations, very long
turns) do not reject. Outputs are written to temp files and renamed into place; the old
manifest is removed first, so a killed run never leaves a manifest beside outputs it does
not describe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftpack import __version__
from sftpack.store.atomic import atomic_file, remove_stale, write_json
from sftpack.errors import SftpackError
from sftpack.store.fingerprint import tokenizer_identity
from sftpack.checks.conversation_key import conversation_hash
from sftpack.checks.messages import ROW_CHECKS, Check, RowError, schema_errors, tokenizer_checks
from sftpack.progress import progress_bar
from sftpack.io.readers import InputSource, ReadOptions, Row, provenance_line, reference

MANIFEST_SUFFIX = ".validate.json"
REJECTS_SUFFIX = ".rejects.jsonl"
BATCH_ROWS = 1000


@dataclass(frozen=True)
class ValidateConfig:
    tokenizer: str | None = None
    """Tokenizer (model) folder: adds the chat-template and control-token checks. None skips them."""
    chat_template: str | None = None
    """Jinja template file the template check renders with instead of the tokenizer's (pack's --chat-template)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Template arguments for every render (pack's --template-arg); a record's own win."""
    max_turn_chars: int = 32_000
    """A message whose content is longer than this many characters gets a `long_turn` warning."""
    max_errors_per_line: int = 20
    """Errors recorded per rejected line; the rest are summed up in one `too_many_errors` entry."""
    examples: int = 5
    """Line numbers listed per warning, and rejected lines quoted, in the manifest."""
    allow_rejects: bool = False
    """Exit 0 even when lines are rejected (changes only the stage's exit code, not the outputs)."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_turn_chars < 1:
            problems.append(f"max_turn_chars {self.max_turn_chars}: must be at least 1")
        if self.max_errors_per_line < 1:
            problems.append(f"max_errors_per_line {self.max_errors_per_line}: must be at least 1")
        if self.examples < 0:
            problems.append(f"examples {self.examples}: must be 0 or more")
        if problems:
            raise SftpackError("options: " + "; ".join(problems))


def _open_inputs(inputs: list[str], out_dir: Path, read: ReadOptions) -> list[InputSource]:
    """Open every input; collect every usage problem with them and the output folder; raise once (exit 2)."""
    sources, problems = read.open_each(inputs)
    owners: dict[str, InputSource] = {}
    for source in sources:
        name, target = source.stem, out_dir / f"{source.stem}.jsonl"
        if name in owners and Path(owners[name].spec).resolve() != Path(source.spec).resolve():
            problems.append(f"{owners[name].spec} and {source.spec} would both write {out_dir / name}.jsonl; "
                            "rename one")
        owners.setdefault(name, source)
        if any(target.resolve() == path.resolve() for path in source.files):
            problems.append(f"{source.spec}: writing {target} would overwrite the input; choose another --out-dir")
    if out_dir.exists() and not out_dir.is_dir():
        problems.append(f"{out_dir}: --out-dir exists and is not a folder")
    elif not problems:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            problems.append(f"{out_dir}: cannot create the output folder ({err.strerror})")
        else:
            if not os.access(out_dir, os.W_OK | os.X_OK):
                problems.append(f"{out_dir}: cannot write to the output folder (permission denied)")
    if problems:
        raise SftpackError("\n  ".join(problems), exit_code=2)
    return sources


def load_renderer(cfg: ValidateConfig) -> tuple[Any, Any]:
    """(tokenizer, ChatRenderer) for the tokenizer checks, rendering as pack will with the same
    template and arguments (exit 2 when missing or without a chat template)."""
    from sftpack.templates.tokenizer import load_renderer as load

    return load(cfg.tokenizer, cfg.chat_template, template_kwargs=cfg.chat_template_kwargs,
                where="--tokenizer, or model.name_or_path in --config")


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


class _Tally:
    """What validate counts while streaming: counts, warnings, the first rejects, duplicate hashes."""

    def __init__(self, cfg: ValidateConfig, verbatim: bool):
        self.cfg, self.verbatim = cfg, verbatim
        self.counts: Counter[str] = Counter()
        self.warnings = _Warnings(cfg.examples)
        self.first_rejects: list[dict[str, Any]] = []
        self.seen: dict[int, Any] = {}  # 8-byte hash of messages+tools -> first line (collisions: ~n^2/2^65)
        self.digests = {"kept": hashlib.sha256(), "rejects": hashlib.sha256()}

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
        # Runs for every kept row: where it is (a dict) is built only for a warning.
        self.counts["kept"] += 1
        self.digests["kept"].update(out)
        key = conversation_hash(row.record)
        if key in self.seen:
            self.warnings.add("duplicate", **_where(row, self.verbatim), repeats=self.seen[key])
        else:
            self.seen[key] = row.number if self.verbatim else row.where()
        messages = row.record["messages"]
        if max([len(m["content"]) for m in messages], default=0) > self.cfg.max_turn_chars:
            for i, message in enumerate(messages):
                if len(message["content"]) > self.cfg.max_turn_chars:
                    self.warnings.add("long_turn", **_where(row, self.verbatim), path=f"/messages/{i}/content",
                                      chars=len(message["content"]))


def validate_file(source: InputSource, out_dir: Path, checks: list[Check], cfg: ValidateConfig,
                  tokenizer_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate one input into `out_dir/<stem>.{jsonl,rejects.jsonl,validate.json}`.

    Args:
        source: the opened input (readers.open_input).
        out_dir: existing output folder.
        checks: conversation checks run on schema-valid records, in order.
        cfg: the options (recorded in the manifest).
        tokenizer_info: the tokenizer's identity (vocabulary, special tokens, template hashes),
            recorded in the manifest.

    Returns:
        The manifest written to `<stem>.validate.json`.
    """
    started = time.perf_counter()
    name = source.stem
    kept_path, rejects_path = out_dir / f"{name}.jsonl", out_dir / f"{name}{REJECTS_SUFFIX}"
    manifest_path = out_dir / f"{name}{MANIFEST_SUFFIX}"
    manifest_path.unlink(missing_ok=True)  # from here until the end, the old outputs look incomplete

    identity = source.identity()
    tally = _Tally(cfg, source.verbatim)
    by_bytes = source.container == "jsonl"  # progress in bytes where the bytes read are the file's
    total = identity["bytes"] if by_bytes else identity.get("rows", identity.get("lines", 0))
    with (atomic_file(kept_path, "wb") as kept, atomic_file(rejects_path, "wb") as rejects,
          progress_bar(total, f"validate: {source.name}", unit="B" if by_bytes else "ex") as bar):
        for batch in source.batches(BATCH_ROWS, blanks=True):
            for row in batch:
                bar.update(len(row.raw) if by_bytes else 1)
                tally.counts["read"] += 1
                if row.blank:
                    tally.counts["blank"] += 1
                    tally.warnings.add("blank", **_where(row, tally.verbatim))
                    continue
                out, errors = check_row(row, tally.verbatim, checks, cfg.max_errors_per_line)
                if errors:
                    rejects.write(tally.reject(row, errors))
                else:
                    kept.write(out)
                    tally.keep(row, out)

    manifest = _manifest(identity, kept_path, rejects_path, tally, cfg, tokenizer_info, started)
    write_json(manifest_path, manifest)
    return manifest


def _manifest(identity: dict[str, Any], kept_path: Path, rejects_path: Path, tally: _Tally, cfg: ValidateConfig,
              tokenizer_info: dict[str, Any] | None, started: float) -> dict[str, Any]:
    counts = tally.counts
    for key in ("read", "kept", "rejected", "blank"):
        counts.setdefault(key, 0)
    return {
        "stage": "validate",
        "version": __version__,
        "input": identity,
        "outputs": {
            "kept": {"path": kept_path.name, "sha256": tally.digests["kept"].hexdigest(), "lines": counts["kept"]},
            "rejects": {"path": rejects_path.name, "sha256": tally.digests["rejects"].hexdigest(),
                        "lines": counts["rejected"]},
        },
        "tokenizer": cfg.tokenizer,
        "tokenizer_identity": tokenizer_info,
        "options": dataclasses.asdict(cfg),
        "counts": {k: counts[k] for k in ("read", "kept", "rejected", "blank")}
        | {k: counts[k] for k in sorted(counts) if k.startswith("rejected_")},
        "warnings": tally.warnings.as_dict(),
        "first_rejects": tally.first_rejects,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run(inputs: list[str | Path], out_dir: str | Path, cfg: ValidateConfig,
        read: ReadOptions | None = None) -> dict[str, Any]:
    """Validate conversations; one set of output files per input name.

    Args:
        inputs: files, folders, globs or dataset names (readers.open_input).
        out_dir: output folder (created if missing).
        cfg: the options.
        read: how inputs are read (layout, split, column map); auto-detected layout by default.

    Returns:
        {"files": [each input's manifest, in input order], "totals": read/kept/rejected/blank summed}.

    Raises:
        SftpackError: (exit 2) a missing or unreadable input, one whose layout cannot be told, an
            unusable output folder, two inputs with the same name, an output that would overwrite
            an input, a bad tokenizer.
    """
    out = Path(out_dir)
    if not inputs:
        raise SftpackError("give at least one input", exit_code=2)
    sources = _open_inputs([str(p) for p in inputs], out, read or ReadOptions())
    checks, tokenizer_info = list(ROW_CHECKS), None
    if cfg.tokenizer:
        tokenizer, renderer = load_renderer(cfg)
        checks += tokenizer_checks(tokenizer, renderer)
        tokenizer_info = tokenizer_identity(tokenizer, renderer.template)
    remove_stale(out)
    files = [validate_file(source, out, checks, cfg, tokenizer_info) for source in sources]
    totals = {k: sum(m["counts"][k] for m in files) for k in ("read", "kept", "rejected", "blank")}
    return {"files": files, "totals": totals}


def summary(result: dict[str, Any], errors: int = 10) -> list[str]:
    """Human-readable lines: per-file counts and warnings, then the first errors as file:line (a row's number for
    Arrow containers).

    Args:
        result: what `run` returned.
        errors: how many rejected lines to quote.

    Returns:
        Lines to print.
    """
    lines = []
    for m in result["files"]:
        c = m["counts"]
        rules = ", ".join(f"{k.removeprefix('rejected_')}={v}" for k, v in c.items() if k.startswith("rejected_"))
        lines.append(f"{m['input']['path']}: read {c['read']}, kept {c['kept']}, rejected {c['rejected']}"
                     f"{f' ({rules})' if rules else ''}, blank {c['blank']}")
        for kind, w in m["warnings"].items():
            if w["count"]:
                unit = "lines" if all("line" in e for e in w["first"]) else "rows"
                lines.append(f"  warning {kind}: {w['count']} ({unit} {', '.join(_place(e) for e in w['first'])}"
                             f"{', ...' if w['count'] > len(w['first']) else ''})")
    quoted = [(m["input"]["path"], r) for m in result["files"] for r in m["first_rejects"]][:errors]
    for path, reject in quoted:
        where = f"{path}:{reject['line']}" if "line" in reject else reference(path, reject["input"], reject["row"])
        for e in reject["errors"][:3]:
            lines.append(f"{where}: {e['path'] or '(line)'} [{e['rule']}] {e['message']}")
    return lines


def _place(entry: dict[str, Any]) -> str:
    return str(entry["line"]) if "line" in entry else f"{entry['input']}:{entry['row']}"
