"""The validate stage: messages JSONL -> valid lines, rejects with reasons, and counts.

For each input `x.jsonl`, streaming line by line in binary (memory holds one line plus an
8-byte hash per kept line for the duplicate warning):

    x.jsonl --classify_line (parse, schema, ROW_CHECKS, tokenizer checks)--+--> DIR/x.jsonl          valid lines, bytes unchanged
                                                                           +--> DIR/x.rejects.jsonl  {line, errors, raw}
                                           counts, warnings, hashes -------+--> DIR/x.validate.json  manifest, written last

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

from pipeline import __version__
from pipeline.atomic import atomic_file, remove_stale, write_json
from pipeline.errors import SftpackError
from pipeline.fingerprint import tokenizer_identity
from pipeline.messages import ROW_CHECKS, Check, classify_line, conversation_hash, tokenizer_checks
from pipeline.progress import progress_bar

MANIFEST_SUFFIX = ".validate.json"
REJECTS_SUFFIX = ".rejects.jsonl"


@dataclass(frozen=True)
class ValidateConfig:
    tokenizer: str | None = None
    """Tokenizer (model) folder: adds the chat-template and control-token checks. None skips them."""
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
            raise SftpackError("validate options: " + "; ".join(problems))


def output_name(path: Path) -> str:
    """`data/x.jsonl` -> `x`: the stem of each output file."""
    return path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem


def _check_paths(inputs: list[Path], out_dir: Path) -> None:
    """Collect every usage problem with inputs and the output folder; raise them once (exit 2)."""
    problems = []
    for path in inputs:
        if not path.exists():
            problems.append(f"{path}: input file not found")
        elif path.is_dir():
            problems.append(f"{path}: is a folder; give the JSONL files inside it")
        elif not os.access(path, os.R_OK):
            problems.append(f"{path}: cannot read the file (permission denied)")
    owners: dict[str, Path] = {}
    for path in inputs:
        name = output_name(path)
        if name in owners and owners[name].resolve() != path.resolve():
            problems.append(f"{owners[name]} and {path} would both write {out_dir / name}.jsonl; rename one")
        owners.setdefault(name, path)
        if path.exists() and (out_dir / f"{name}.jsonl").resolve() == path.resolve():
            problems.append(f"{path}: writing {out_dir / name}.jsonl would overwrite the input; choose another "
                            "--out-dir")
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
        raise SftpackError("validate: " + "\n  ".join(problems), exit_code=2)


def load_tokenizer(path: str) -> Any:
    """The tokenizer for the template checks (exit 2 when missing or without a chat template)."""
    from pipeline.tokenizer import load_renderer

    return load_renderer(path, where="--tokenizer, or model.name_or_path in --config")[0]


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


def validate_file(path: Path, out_dir: Path, checks: list[Check], cfg: ValidateConfig,
                  tokenizer_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate one JSONL file into `out_dir/<name>.{jsonl,rejects.jsonl,validate.json}`.

    Args:
        path: the input file.
        out_dir: existing output folder.
        checks: conversation checks run on schema-valid records, in order.
        cfg: the options (recorded in the manifest).
        tokenizer_info: the tokenizer's identity (vocabulary, special tokens, template hashes),
            recorded in the manifest.

    Returns:
        The manifest written to `<name>.validate.json`.
    """
    started = time.perf_counter()
    name = output_name(path)
    kept_path, rejects_path = out_dir / f"{name}.jsonl", out_dir / f"{name}{REJECTS_SUFFIX}"
    manifest_path = out_dir / f"{name}{MANIFEST_SUFFIX}"
    manifest_path.unlink(missing_ok=True)  # from here until the end, the old outputs look incomplete

    counts: Counter[str] = Counter()
    warnings = _Warnings(cfg.examples)
    first_rejects: list[dict[str, Any]] = []
    seen: dict[int, int] = {}  # 8-byte hash of messages+tools -> first line (collisions: ~n^2/2^65)
    digests = {"input": hashlib.sha256(), "kept": hashlib.sha256(), "rejects": hashlib.sha256()}

    with (open(path, "rb") as source, atomic_file(kept_path, "wb") as kept, atomic_file(rejects_path, "wb") as rejects,
          progress_bar(path.stat().st_size, f"validate: {path.name}", unit="B") as bar):
        for line_no, raw in enumerate(source, start=1):
            digests["input"].update(raw)
            bar.update(len(raw))
            counts["read"] += 1
            if not raw.strip():
                counts["blank"] += 1
                warnings.add("blank", line=line_no)
                continue
            record, errors = classify_line(raw, checks, cfg.max_errors_per_line)
            if errors:
                counts["rejected"] += 1
                counts.update(f"rejected_{rule}" for rule in dict.fromkeys(e.rule for e in errors))
                entry = {"line": line_no, "errors": [e.as_dict() for e in errors]}
                if len(first_rejects) < cfg.examples:
                    first_rejects.append(entry)
                text = raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
                out = (json.dumps(entry | {"raw": text}, ensure_ascii=False) + "\n").encode("utf-8")
                rejects.write(out)
                digests["rejects"].update(out)
                continue
            counts["kept"] += 1
            out = raw if raw.endswith(b"\n") else raw + b"\n"  # a last line without newline gets one
            kept.write(out)
            digests["kept"].update(out)
            key = conversation_hash(record)
            if key in seen:
                warnings.add("duplicate", line=line_no, repeats=seen[key])
            else:
                seen[key] = line_no
            for i, message in enumerate(record["messages"]):
                if len(message["content"]) > cfg.max_turn_chars:
                    warnings.add("long_turn", line=line_no, path=f"/messages/{i}/content", chars=len(message["content"]))

    for key in ("read", "kept", "rejected", "blank"):
        counts.setdefault(key, 0)
    manifest = {
        "stage": "validate",
        "version": __version__,
        "input": {"path": str(path), "sha256": digests["input"].hexdigest(), "bytes": path.stat().st_size},
        "outputs": {
            "kept": {"path": kept_path.name, "sha256": digests["kept"].hexdigest(), "lines": counts["kept"]},
            "rejects": {"path": rejects_path.name, "sha256": digests["rejects"].hexdigest(), "lines": counts["rejected"]},
        },
        "tokenizer": cfg.tokenizer,
        "tokenizer_identity": tokenizer_info,
        "options": dataclasses.asdict(cfg),
        "counts": {k: counts[k] for k in ("read", "kept", "rejected", "blank")}
        | {k: counts[k] for k in sorted(counts) if k.startswith("rejected_")},
        "warnings": warnings.as_dict(),
        "first_rejects": first_rejects,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(manifest_path, manifest)
    return manifest


def run(inputs: list[str | Path], out_dir: str | Path, cfg: ValidateConfig) -> dict[str, Any]:
    """Validate messages JSONL files; one set of output files per input name.

    Args:
        inputs: JSONL files.
        out_dir: output folder (created if missing).
        cfg: the options.

    Returns:
        {"files": [each input's manifest, in input order], "totals": read/kept/rejected/blank summed}.

    Raises:
        SftpackError: (exit 2) a missing or unreadable input, an unusable output folder, two inputs
            with the same name, an output that would overwrite an input, a bad tokenizer.
    """
    paths, out = [Path(p) for p in inputs], Path(out_dir)
    if not paths:
        raise SftpackError("validate: give at least one input JSONL file", exit_code=2)
    _check_paths(paths, out)
    checks, tokenizer_info = list(ROW_CHECKS), None
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
        checks += tokenizer_checks(tokenizer)
        tokenizer_info = tokenizer_identity(tokenizer, tokenizer.chat_template)
    remove_stale(out)
    files = [validate_file(path, out, checks, cfg, tokenizer_info) for path in paths]
    totals = {k: sum(m["counts"][k] for m in files) for k in ("read", "kept", "rejected", "blank")}
    return {"files": files, "totals": totals}


def summary(result: dict[str, Any], errors: int = 10) -> list[str]:
    """Human-readable lines: per-file counts and warnings, then the first errors as file:line.

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
                lines.append(f"  warning {kind}: {w['count']} (lines {', '.join(str(e['line']) for e in w['first'])}"
                             f"{', ...' if w['count'] > len(w['first']) else ''})")
    quoted = [(m["input"]["path"], r) for m in result["files"] for r in m["first_rejects"]][:errors]
    for path, reject in quoted:
        for e in reject["errors"][:3]:
            lines.append(f"{path}:{reject['line']}: {e['path'] or '(line)'} [{e['rule']}] {e['message']}")
    return lines
