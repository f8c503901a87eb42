"""The validate stage: conversations in any container and layout -> valid lines, rejects with reasons, and counts.

Inputs are read through `sftpack.io.readers.open_input` (JSONL, .jsonl.gz, .jsonl.zst, Parquet, a
save_to_disk folder, a cached dataset; messages, sharegpt or alpaca layout) and cut into ranges
(io.ranges), which the executor's workers check in parallel (validation/rows.py, streaming: memory
holds one line per worker, plus 16 bytes per kept line for the duplicate warning); the driver
merges their tallies in input order and concatenates their parts:

    x.jsonl ranges --CheckRanges (parse, schema, ROW_CHECKS, tokenizer checks)--> kept-R, rejects-R, tally
    parts, in order ──────────────────────────────────────────────────────────+--> DIR/x.jsonl          valid lines, bytes unchanged
                                                                              +--> DIR/x.rejects.jsonl  {line, errors, raw}
    tallies merged (counts, warnings, duplicates over the whole input) ───────+--> DIR/x.validate.json  manifest, written last

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
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftpack import __version__
from sftpack.config.data_options import with_absolute_paths
from sftpack.errors import SftpackError
from sftpack.execution import Execution
from sftpack.execution.cluster import Staging
from sftpack.io.readers import InputSource, ReadOptions, reference
from sftpack.records import reject_policy as refuse_rejects
from sftpack.store.atomic import INCOMPLETE_PREFIX, atomic_file, remove_stale, write_json
from sftpack.store.fingerprint import tokenizer_identity
from sftpack.validation.rows import CheckRanges, Tally, merge

MIN_RANGE_BYTES = 4 << 20
"""The smallest input range validate checks as a task of its own: about half a second of checking."""
MANIFEST_SUFFIX = ".validate.json"
REJECTS_SUFFIX = ".rejects.jsonl"


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

    @classmethod
    def from_run_config(cls, run_config: Any | None, **given: Any) -> "ValidateConfig":
        """The options a run config implies (model.name_or_path, the template pack will use and its
        arguments, data.allow_rejects), then the `given` ones that are not None."""
        implied: dict[str, Any] = {}
        if run_config is not None:
            data = run_config.data  # the template pack will use is the one checked
            implied = {"tokenizer": run_config.model.name_or_path, "chat_template": data.chat_template,
                       "chat_template_kwargs": dict(data.chat_template_kwargs) or None,
                       "allow_rejects": data.allow_rejects}
        return cls(**implied | {key: value for key, value in given.items() if value is not None})

    def load_renderer(self) -> tuple[Any, Any]:
        """(tokenizer, ChatRenderer) for the tokenizer checks, rendering as pack will with the same
        template and arguments (exit 2 when missing or without a chat template)."""
        from sftpack.templates.tokenizer import load_renderer

        return load_renderer(self.tokenizer, self.chat_template, template_kwargs=self.chat_template_kwargs,
                             where="--tokenizer, or model.name_or_path in --config")


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


def _manifest(identity: dict[str, Any], out: Path, source: InputSource, tally: Tally, cfg: ValidateConfig,
              tokenizer_info: dict[str, Any] | None, started: float) -> dict[str, Any]:
    kept_path, rejects_path = out / f"{source.stem}.jsonl", out / f"{source.stem}{REJECTS_SUFFIX}"
    counts = tally.counts
    for key in ("read", "kept", "rejected", "blank"):
        counts.setdefault(key, 0)
    return {
        "stage": "validate",
        "version": __version__,
        "input": identity,
        "outputs": {
            "kept": {"path": kept_path.name, "sha256": None, "lines": counts["kept"]},
            "rejects": {"path": rejects_path.name, "sha256": None, "lines": counts["rejected"]},
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


def run(inputs: list[str | Path], out_dir: str | Path, cfg: ValidateConfig, read: ReadOptions | None = None,
        execution: Execution | None = None) -> dict[str, Any]:
    """Validate conversations; one set of output files per input name.

    Args:
        inputs: files, folders, globs or dataset names (readers.open_input).
        out_dir: output folder (created if missing).
        cfg: the options.
        read: how inputs are read (layout, split, column map); auto-detected layout by default.
        execution: where the ranges are checked (workers here, or a Ray cluster); the outputs are the same.

    Returns:
        {"files": [each input's manifest, in input order], "totals": read/kept/rejected/blank summed}.

    Raises:
        SftpackError: (exit 2) a missing or unreadable input, one whose layout cannot be told, an
            unusable output folder, two inputs with the same name, an output that would overwrite
            an input, a bad tokenizer; a node that cannot see --out-dir or an input, by name.
    """
    from sftpack.io.ranges import byte_ranges, numbered
    from sftpack.progress import progress_bar

    started = time.perf_counter()
    out = Path(out_dir)
    if not inputs:
        raise SftpackError("give at least one input", exit_code=2)
    sources = _open_inputs([str(p) for p in inputs], out, read or ReadOptions())
    loaded = cfg.load_renderer() if cfg.tokenizer else None
    tokenizer_info = tokenizer_identity(loaded[0], loaded[1].template) if loaded else None
    remove_stale(out)
    identities = [source.identity() for source in sources]
    for source in sources:  # from here until the end, the old outputs look incomplete
        (out / f"{source.stem}{MANIFEST_SUFFIX}").unlink(missing_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f"{INCOMPLETE_PREFIX}{os.getpid()}-validate.", dir=out))
    try:
        with (execution or Execution()).executor() as executor:
            staging = Staging.create(staged)
            ranges = numbered(byte_ranges(sources, executor.workers, MIN_RANGE_BYTES, executor.distributed), executor)
            step = CheckRanges(with_absolute_paths(cfg), sources, staging, None if executor.distributed else loaded)
            by_bytes = all(s.progress_in_bytes for s in sources)  # the unit CheckRanges counts in
            total = sum(i["bytes"] if s.progress_in_bytes else i.get("rows", i.get("lines", 0))
                        for s, i in zip(sources, identities))
            with progress_bar(total, "validate", unit="B" if by_bytes else "ex") as bar:
                results = list(executor.map(step, ranges, bar))
        files = []
        for s, source in enumerate(sources):
            mine = [(task.index, result) for task, result in zip(ranges, results) if task.source == s]
            manifest = _manifest(identities[s], out, source, merge(cfg, source.verbatim, [r for _, r in mine]), cfg,
                                 tokenizer_info, started)
            for kind in ("kept", "rejects"):
                path = out / manifest["outputs"][kind]["path"]
                manifest["outputs"][kind]["sha256"] = _concatenate(staging, kind, mine, path)
            write_json(out / f"{source.stem}{MANIFEST_SUFFIX}", manifest)  # last: the outputs are complete
            files.append(manifest)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    totals = {k: sum(m["counts"][k] for m in files) for k in ("read", "kept", "rejected", "blank")}
    return {"files": files, "totals": totals}


def _concatenate(staging: Staging, kind: str, parts: list[tuple[int, dict[str, Any]]], target: Path) -> str:
    """One output file from its ranges' parts, in order (one part is renamed); its sha256."""
    if len(parts) == 1:
        os.replace(staging.file(f"{kind}-{parts[0][0]:06d}"), target)
        return parts[0][1]["sha256"][kind]
    digest = hashlib.sha256()
    with atomic_file(target, "wb") as out:
        for index, _ in parts:
            with open(staging.file(f"{kind}-{index:06d}"), "rb") as part:
                while block := part.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def reject_policy(result: dict[str, Any], out_dir: str | Path, allow: bool, go_on: str, where: str = "") -> None:
    """records.reject_policy for what `run` returned: the rejects files list every rejected line.

    Raises:
        SftpackError: (exit 1) rejected lines and not `allow`.
    """
    rejected: dict[str, int] = {}
    for m in result["files"]:
        for key, count in m["counts"].items():
            if key.startswith("rejected_"):
                rejected[key.removeprefix("rejected_")] = rejected.get(key.removeprefix("rejected_"), 0) + count
    first = [f"{_where(m['input']['path'], r)} [{e['rule']}] {e['message']}"
             for m in result["files"] for r in m["first_rejects"] for e in r["errors"][:1]]
    listed = ", ".join(str(Path(out_dir) / m["outputs"]["rejects"]["path"]) for m in result["files"]
                       if m["counts"]["rejected"])
    refuse_rejects(allow, rejected, result["totals"]["read"], "lines", first, f"{listed} list every one", go_on, where)


def _where(path: str, reject: dict[str, Any]) -> str:
    return f"{path}:{reject['line']}" if "line" in reject else reference(path, reject["input"], reject["row"])


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
        where = _where(path, reject)
        for e in reject["errors"][:3]:
            lines.append(f"{where}: {e['path'] or '(line)'} [{e['rule']}] {e['message']}")
    return lines


def _place(entry: dict[str, Any]) -> str:
    return str(entry["line"]) if "line" in entry else f"{entry['input']}:{entry['row']}"
