"""The mix stage's passes over its sources, in the order the recipe's parts apply (1, 2 and 4
stream on the driver; 3 runs as tasks on the executor: pipeline/mixing/tasks.py).

    1 read      each source (readers.open_input) ──schema──> .spill/<i>.jsonl (valid lines, with source,
                input, row) | removed: rejected_<rule>
    2 hold out  seeded positions of each spill ──> eval/<source>.jsonl, and into the eval index (decontamination)
    3 clean     the rest, in blocks ──filters, conversation rules, decontamination; then exact and
                near per component, in source order then row──> .spill/<i>.kept.jsonl | removed:
                filter_<name>, rejected_<rule>, contaminated, exact_duplicate, near_duplicate
    4 sample    target counts ──copies──> train.jsonl | removed: not_sampled

The driver holds the eval positions, about 40 bytes per line for pass 3 (tasks.py) and one token
count per kept record; every record goes to disk as it is read.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

import msgspec

from sftpack.checks.conversation_key import conversation_hash
from sftpack.checks.messages import schema_errors
from sftpack.errors import SftpackError
from sftpack.io.readers import InputSource, Row
from sftpack.mixing import sampling
from sftpack.mixing.recipe import Recipe
from sftpack.mixing.text import dialogue_text, words

BATCH = 1000
SPILL = ".spill"


@dataclass
class SourceCounts:
    """Per source: in = held_out + removed (by reason) + sampled; out = sampled + repeated."""

    read: int = 0
    held_out: int = 0
    removed: Counter = field(default_factory=Counter)
    available: int = 0
    sampled: int = 0
    repeated: int = 0
    out: int = 0
    tokens: int | None = None
    kept_tokens: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        counts = {"in": self.read, "held_out": self.held_out, "removed": dict(sorted(self.removed.items())),
                  "available": self.available, "sampled": self.sampled, "repeated": self.repeated, "out": self.out}
        return counts if self.tokens is None else counts | {"tokens": self.tokens}


def _line(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def record_id(line: dict[str, Any]) -> str:
    """`source:input:row`: names a record in removed.jsonl and manifests."""
    return f"{line['source']}:{line['input']}:{line['row']}"


class Removed:
    """removed.jsonl: every record left out of train and eval, with its reason; counted per source."""

    def __init__(self, handle: IO[bytes], counts: dict[str, SourceCounts]):
        self.handle, self.counts = handle, counts

    def add(self, line: dict[str, Any], reason: str, messages: bool = True, **details: Any) -> None:
        entry = {"id": record_id(line), "source": line["source"], "input": line["input"], "row": line["row"],
                 "reason": reason} | details
        if messages and "messages" in line:
            entry["messages"] = line["messages"]
        self.handle.write(_line(entry))
        self.counts[line["source"]].removed[reason] += 1


# ---------------------------------------------------------------- 1 read

def _valid_line(name: str, row: Row) -> tuple[dict[str, Any], list]:
    line = {"source": name, "input": row.file, "row": row.number}
    if row.error is not None:
        return line | {"record": row.original}, [row.error]
    errors = schema_errors(row.record)
    if errors:
        return line | {"record": row.original}, errors
    return dict(row.record) | line, []


def read_sources(tmp: Path, recipe: Recipe, opened: list[InputSource], removed: Removed) -> list[int]:
    """Pass 1: every source's schema-valid records into its spill; the rest removed as rejected_<rule>.

    Returns:
        Valid records per source.

    Raises:
        SftpackError: sources without a valid record, or asked to hold out more than they have.
    """
    (tmp / SPILL).mkdir()
    valid, problems = [], []
    for index, (spec, source) in enumerate(zip(recipe.sources, opened)):
        counts, kept = removed.counts[spec.name], 0
        with open(tmp / SPILL / f"{index}.jsonl", "wb") as spill:
            for row in source.rows():
                counts.read += 1
                line, errors = _valid_line(spec.name, row)
                if errors:
                    removed.add(line, f"rejected_{errors[0].rule}", errors=[e.as_dict() for e in errors])
                else:
                    spill.write(_line(line))
                    kept += 1
        valid.append(kept)
        held = recipe.eval_of(spec).size(kept)
        if kept == 0:
            reasons = ", ".join(f"{k}={v}" for k, v in counts.removed.items()) or "no record"
            problems.append(f"sources.{index}.path ({spec.name}) {spec.path}: empty source, no valid record "
                            f"({counts.read} read; {reasons}); fix the data or remove the source")
        elif held > kept:
            problems.append(f"sources.{index} ({spec.name}): eval asks for {held} records but it has {kept} valid; "
                            "lower eval.count")
    if problems:
        raise SftpackError(f"{recipe.origin}:\n  " + "\n  ".join(problems), exit_code=2)
    return valid


def spill_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        yield from enumerate(handle)


def spill_dialogues(path: Path) -> Iterator[list[str]]:
    """Each spilled record's dialogue words (decontaminate.Contamination.mark_boilerplate)."""
    for _, raw in spill_lines(path):
        yield words(dialogue_text(msgspec.json.decode(raw)))


# ---------------------------------------------------------------- 2 hold out

def hold_out(tmp: Path, recipe: Recipe, valid: list[int], counts: dict[str, SourceCounts],
             evals: Any, eval_copies: dict[int, tuple[str, str]]) -> list[set[int]]:
    """Pass 2: write eval/<source>.jsonl; index each eval record for decontamination (its dialogue
    for the near search of `evals`, a decontaminate.EvalIndex; its conversation hash for exact copies;
    decontaminate reaches this module through dedup, so the type is not imported here).

    Returns:
        Per source, the held-out positions among its valid records.
    """
    (tmp / "eval").mkdir()
    held = []
    for i, spec in enumerate(recipe.sources):
        positions = sampling.eval_positions(recipe, spec.name, valid[i], recipe.eval_of(spec).size(valid[i]))
        held.append(positions)
        counts[spec.name].held_out = len(positions)
        if not positions:
            continue
        with open(tmp / "eval" / f"{spec.name}.jsonl", "wb") as out:
            for position, raw in spill_lines(tmp / SPILL / f"{i}.jsonl"):
                if position in positions:
                    out.write(raw)
                    if recipe.decontaminate.eval_splits:
                        line = msgspec.json.decode(raw)
                        evals.add(f"eval/{spec.name}", record_id(line), words(dialogue_text(line)))
                        eval_copies.setdefault(conversation_hash(line), (f"eval/{spec.name}", record_id(line)))
    return held
