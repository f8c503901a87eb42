"""The convert-data stage: one input of any container and layout -> messages JSONL.

    IN --readers.open_input--> rows in messages form --+--> OUT.jsonl                  a normalised line per row,
                                                        |                               ending with "input" and "row"
                                                        +--> OUT.convert-rejects.jsonl  rows that could not be converted
                                                        +--> OUT.convert.json           manifest, written last

Only conversion happens here; whether a conversation is fit to train on is validate's question
(run `sftpack validate OUT.jsonl` next, or validate the input directly: it converts the same way).
Outputs are written to temp files and renamed into place; the old manifest goes first, so a
killed run never leaves a manifest beside outputs it does not describe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpack import __version__
from sftpack.store.atomic import atomic_file, write_json
from sftpack.errors import SftpackError
from sftpack.io.readers import ReadOptions, Row, provenance_line, reference

MANIFEST_SUFFIX = ".convert.json"
REJECTS_SUFFIX = ".convert-rejects.jsonl"


@dataclass(frozen=True)
class ConvertConfig:
    read: ReadOptions = field(default_factory=ReadOptions)
    """How the input is read: layout (auto-detected by default), split, column map."""
    examples: int = 5
    """Rejected rows quoted in the manifest."""
    allow_rejects: bool = False
    """Exit 0 even when rows cannot be converted (changes only the stage's exit code)."""


def output_paths(out: Path) -> tuple[Path, Path]:
    """(rejects, manifest) beside `out`: x.jsonl -> x.convert-rejects.jsonl, x.convert.json."""
    stem = out.name.removesuffix(".jsonl")
    return out.with_name(stem + REJECTS_SUFFIX), out.with_name(stem + MANIFEST_SUFFIX)


def _reject_line(row: Row) -> bytes:
    entry = {"input": row.file, "row": row.number, "errors": [row.error.as_dict()]}
    quoted = {"raw": row.raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")} if row.raw is not None \
        else {"record": row.original}
    return (json.dumps(entry | quoted, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def run(input: str | Path, out: str | Path, cfg: ConvertConfig) -> dict[str, Any]:
    """Convert one input to messages JSONL at `out`, rejects and manifest beside it.

    Args:
        input: a file, folder, glob or dataset name (readers.open_input).
        out: the messages JSONL to write (its folder is created).
        cfg: the options.

    Returns:
        The manifest: input identity, output sha256 and lines, counts (read, converted, rejected,
        blank, rejected_<rule>), the first rejects.

    Raises:
        SftpackError: (exit 2) an input that cannot be opened, or `out` that is the input itself.
    """
    started, out = time.perf_counter(), Path(out)
    source = cfg.read.open(input)
    if any(out.resolve() == path.resolve() for path in source.files):
        raise SftpackError(f"{out}: --out is the input itself; choose another path", exit_code=2)
    rejects_path, manifest_path = output_paths(out)
    manifest_path.unlink(missing_ok=True)  # from here until the end, the old outputs look incomplete
    identity = source.identity()
    counts: Counter[str] = Counter(read=0, converted=0, rejected=0, blank=0)
    first: list[dict[str, Any]] = []
    digests = {"out": hashlib.sha256(), "rejects": hashlib.sha256()}
    with atomic_file(out, "wb") as kept, atomic_file(rejects_path, "wb") as rejects:
        for batch in source.batches(blanks=True):
            for row in batch:
                counts["read"] += 1
                if row.blank:
                    counts["blank"] += 1
                    continue
                line, error = provenance_line(row) if row.error is None else (None, row.error)
                if error:
                    row = row._replace(error=error)
                    counts["rejected"] += 1
                    counts[f"rejected_{error.rule}"] += 1
                    if len(first) < cfg.examples:
                        first.append({"input": row.file, "row": row.number, "errors": [error.as_dict()]})
                    line, target, digest = _reject_line(row), rejects, digests["rejects"]
                else:
                    counts["converted"] += 1
                    target, digest = kept, digests["out"]
                target.write(line)
                digest.update(line)
    manifest = {
        "stage": "convert-data", "version": __version__, "input": identity,
        "outputs": {"messages": {"path": out.name, "sha256": digests["out"].hexdigest(), "lines": counts["converted"]},
                    "rejects": {"path": rejects_path.name, "sha256": digests["rejects"].hexdigest(),
                                "lines": counts["rejected"]}},
        "options": {"format": cfg.read.format, "split": cfg.read.split,
                    "columns": dataclasses.asdict(cfg.read.columns), "allow_rejects": cfg.allow_rejects},
        "counts": dict(counts), "first_rejects": first, "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(manifest_path, manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> list[str]:
    """Human-readable lines: counts, then the first rejects as `input:N: path [rule] message`."""
    c, name = manifest["counts"], manifest["input"]["path"]
    rules = ", ".join(f"{k.removeprefix('rejected_')}={v}" for k, v in c.items() if k.startswith("rejected_"))
    lines = [f"{name} ({manifest['input']['container']}, {manifest['input']['layout']}): read {c['read']}, "
             f"converted {c['converted']}, rejected {c['rejected']}{f' ({rules})' if rules else ''}, blank {c['blank']}"
             f" -> {manifest['outputs']['messages']['path']}"]
    for reject in manifest["first_rejects"]:
        for e in reject["errors"]:
            where = reference(name, reject["input"], reject["row"])
            lines.append(f"{where}: {e['path'] or '(row)'} [{e['rule']}] {e['message']}")
    return lines
