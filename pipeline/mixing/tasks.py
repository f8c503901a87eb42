"""Pass 3 of the mix stage as tasks, the same ones on a local process pool and on a Ray cluster
(`sftpack mix --ray`), so both write the same bytes by construction.

    .spill/<i>.jsonl ──line offsets (driver)──> blocks of BLOCK_LINES lines of one source
    block ──ScreenBlock: filters, conversation rules, decontamination──> removals, token counts, report
          entries; for each line that passes, its class; its keys by partition (.keys/<block>.npy)
    partition ──BucketKeys: the keys two classes or more share──> buckets (each class by its first line)
          ──driver: union-find──> components
    components ──DeduplicateComponents: mixing.dedup.deduplicate, in priority order──> removals
    driver ──every decision in line order──> .spill/<i>.kept.jsonl, removed.jsonl, contamination.jsonl

A class holds the lines with the same shingle set and conversation hash (with exact dedup only, the
same conversation hash); its keys are the LSH's band keys and, with both kinds of dedup, the
conversation hash (tool-call arguments in another key order change the text, not the hash).
pipeline/mixing/near_graph.py says why deduplicating each component alone decides as one pass over
every record would. Every task's result depends only on its lines, the recipe and the fixed MinHash
seed; the driver applies the results in line order.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np

from sftpack.checks.conversation_key import conversation_hash
from sftpack.checks.messages import ROW_CHECKS
from sftpack.config.data_options import with_absolute_paths
from sftpack.execution import Executor, Step
from sftpack.execution.cluster import Staging, atomic_path, check_input
from sftpack.mixing.decontaminate import Contamination
from sftpack.mixing.dedup import Removal, deduplicate
from sftpack.mixing.filters import Filters
from sftpack.mixing.near_graph import Components, bucket_members, key_width, line_keys
from sftpack.mixing.passes import SPILL, Removed, SourceCounts, record_id
from sftpack.mixing.recipe import Recipe
from sftpack.mixing.text import conversation_words

BLOCK_LINES = 2000  # lines per screening task
COMPONENT_LINES = 2000  # lines per deduplication task (components are not split)
_SCAN_BYTES = 16 << 20
KEYS = ".keys"


def line_starts(path: Path) -> np.ndarray:
    """Byte offset of every line of a file, read in bounded chunks."""
    starts, offset = [np.zeros(1, dtype=np.int64)], 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_SCAN_BYTES):
            starts.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10).astype(np.int64) + offset + 1)
            offset += len(chunk)
    found = np.concatenate(starts)
    return found[found < offset]  # no line starts at the end of the file


class Spills:
    """The spill files as one sequence of lines in priority order (source, then row): line ordinal ->
    (file, byte range). Small enough to send to every task (8 bytes a line)."""

    def __init__(self, paths: list[Path]):
        self.paths = [str(p.resolve()) for p in paths]
        self.sizes = [p.stat().st_size for p in paths]
        self.starts = [line_starts(p) for p in paths]
        self.firsts = np.cumsum([0] + [len(s) for s in self.starts])

    @property
    def total(self) -> int:
        return int(self.firsts[-1])

    def blocks(self, held: list[set[int]]) -> list[dict[str, Any]]:
        """Tasks for ScreenBlock: BLOCK_LINES lines of one file each, with the held-out positions among them."""
        tasks = []
        for f, starts in enumerate(self.starts):
            positions = np.array(sorted(held[f]), dtype=np.int64)
            for i in range(0, len(starts), BLOCK_LINES):
                inside = positions[np.searchsorted(positions, i):np.searchsorted(positions, i + BLOCK_LINES)]
                tasks.append({"block": len(tasks), "first": int(self.firsts[f] + i),
                              "count": int(min(BLOCK_LINES, len(starts) - i)), "held": (inside - i).tolist()})
        return tasks

    def lines(self, ordinals: list[int]) -> list[bytes]:
        """The lines of ascending `ordinals`, each file opened once."""
        found: list[bytes] = []
        files = np.searchsorted(self.firsts, ordinals, side="right") - 1
        for f in np.unique(files).tolist():
            check_input(self.paths[f], self.sizes[f])
            with open(self.paths[f], "rb") as handle:
                for ordinal in np.asarray(ordinals)[files == f].tolist():
                    handle.seek(int(self.starts[f][ordinal - self.firsts[f]]))
                    found.append(handle.readline().rstrip(b"\n"))
        return found

    def read(self, first: int, count: int) -> list[bytes]:
        """`count` lines from ordinal `first` (all in one file), each with its newline."""
        f = int(np.searchsorted(self.firsts, first, side="right") - 1)
        check_input(self.paths[f], self.sizes[f])
        start = int(self.starts[f][first - self.firsts[f]])
        last = first - self.firsts[f] + count
        end = int(self.starts[f][last]) if last < len(self.starts[f]) else self.sizes[f]
        with open(self.paths[f], "rb") as handle:
            handle.seek(start)
            return handle.read(end - start).splitlines(keepends=True)  # JSON lines hold no raw newline


@dataclasses.dataclass
class ScreenBlock(Step):
    """Filters, conversation rules and decontamination for a block's lines, in that order (a record
    removed for any reason is never the one a duplicate is kept in favour of); the class and keys
    of each line that passes."""

    recipe: Recipe
    spills: Spills
    lookups: Contamination
    eval_copies: dict[int, tuple[str, str]]
    staging: Staging
    partitions: int

    def setup(self) -> None:
        self.staging.check()
        self.filters = Filters(self.recipe.filters, self.recipe.tokenizer)

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        held = set(task["held"])
        first = task["first"]
        raws = self.spills.read(first, task["count"])
        ordinals = [first + i for i in range(len(raws)) if i not in held]
        lines = [msgspec.json.decode(raws[i]) for i in range(len(raws)) if i not in held]
        tokens = self.filters.tokens(lines)
        reasons = self.filters.reasons(lines, tokens)
        dialogues, all_words = zip(*map(conversation_words, lines)) if lines else ((), ())  # each turn split once
        found = self.lookups.matches(list(dialogues))
        removals: dict[int, Removal] = {}
        reports: list[bytes] = []
        eligible: list[int] = []
        hashes: list[bytes] = []
        for i, line in enumerate(lines):
            removal, key, report = self._screen(line, reasons[i], found[i])
            if report is not None:
                reports.append(report)
            if removal is not None:
                removals[ordinals[i]] = removal
            else:
                eligible.append(i)
                hashes.append(key.to_bytes(8, "little", signed=True))
        classes, splits = self._keys(task["block"], [lines[i] for i in eligible], [ordinals[i] for i in eligible],
                                     [all_words[i] for i in eligible], hashes)
        return {"tokens": np.asarray(tokens if tokens is not None else [0] * len(lines), dtype=np.int64),
                "removals": removals, "reports": reports, "classes": classes, "splits": splits,
                "eligible": np.asarray([ordinals[i] for i in eligible], dtype=np.int64)}

    def _screen(self, line: dict[str, Any], reason: str | None,
                found: dict[str, Any] | None) -> tuple[Removal | None, int, bytes | None]:
        """Filters, conversation rules, decontamination: (the removal or None, the conversation hash
        (0 when not reached), the contamination.jsonl line in report mode, where a match stays).
        `found`: the record's near eval copy or benchmark match (decontaminate.Contamination)."""
        if reason is not None:
            return (reason, {}), 0, None
        errors = [e for check in ROW_CHECKS for e in check(line)]
        if errors:
            return (f"rejected_{errors[0].rule}", {"errors": [e.as_dict() for e in errors]}), 0, None
        key = conversation_hash(line)
        copy = self.eval_copies.get(key) if self.eval_copies else None
        # the same conversation as an eval record (its text may differ: tool-call keys in another order)
        match = {"benchmark": copy[0], "item": copy[1], "jaccard": 1.0} if copy is not None else found
        if match is None:
            return None, key, None
        if self.recipe.decontaminate.mode == "report":
            return None, key, (json.dumps({"id": record_id(line)} | match, ensure_ascii=False) + "\n").encode()
        return ("contaminated", match), key, None

    def _keys(self, block: int, lines: list[dict[str, Any]], ordinals: list[int], all_words: list[list[str]],
              hashes: list[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """Each line's class (from its conversation hash, `hashes`, and with near dedup its shingles);
        the keys of each class's first line here, in .keys/<block>.npy sorted by partition, and where
        each partition starts (None without near dedup: a class is a component)."""
        dedup = self.recipe.dedup
        if dedup.near is None:
            return np.array(hashes, dtype="S16"), None
        classes, keys = line_keys(lines, dedup.near, all_words, hashes)
        width = max(key_width(dedup.near), 10)  # every block's: hash keys are 2 + 8 bytes
        rows: list[tuple[bytes, int, bytes]] = []
        seen: set[bytes] = set()
        for klass, line_keys_, ordinal, exact in zip(classes, keys, ordinals, hashes):
            if klass in seen:  # a class's lines share every key, and its first line of all is first in its block
                continue
            seen.add(klass)
            rows += [(key, ordinal, klass) for key in line_keys_]
            if dedup.exact:
                rows.append((b"\xff\xff" + exact, ordinal, klass))
        table = np.array(rows, dtype=[("key", f"S{width}"), ("ordinal", "<i8"), ("klass", "S16")])
        key_bytes = np.ascontiguousarray(table["key"]).view(np.uint8).reshape(len(table), width)
        part = np.ascontiguousarray(key_bytes[:, 2:6]).view("<u4")[:, 0] % self.partitions
        order = np.argsort(part, kind="stable")
        path = self.staging.file(f"{block}.npy")
        staged = atomic_path(path)
        with open(staged, "wb") as handle:
            np.save(handle, table[order])
        staged.rename(path)
        splits = np.searchsorted(part[order], np.arange(self.partitions + 1)).astype(np.int64)
        return np.array(classes, dtype="S16"), splits

    def units(self, task: dict[str, Any], result: Any) -> int:
        return task["count"]


@dataclasses.dataclass
class BucketKeys(Step):
    """One partition of every block's keys: the buckets (keys) that hold two classes or more, as the
    sorted ordinals of each class's first line, each bucket once (near copies share most band keys)."""

    staging: Staging

    def setup(self) -> None:
        self.staging.check()

    def run(self, task: list[tuple[int, int, int]]) -> list[np.ndarray]:
        parts = [np.load(self.staging.file(f"{block}.npy"), mmap_mode="r")[start:end] for block, start, end in task]
        rows = np.concatenate(parts) if parts else np.empty(0, dtype=[("key", "S10")])
        if not len(rows):
            return []
        _, inverse, counts = np.unique(rows["key"], return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inverse] > 1)
        shared = shared[np.argsort(inverse[shared], kind="stable")]
        buckets: dict[tuple[int, ...], None] = {}
        for group in np.split(shared, np.flatnonzero(np.diff(inverse[shared])) + 1) if len(shared) else ():
            members = tuple(bucket_members(rows["ordinal"][group], rows["klass"][group]))
            if len(members) > 1:
                buckets[members] = None
        return [np.array(m, dtype=np.int64) for m in buckets]


@dataclasses.dataclass
class DeduplicateComponents(Step):
    """Duplicates' decisions (exact, then near) per component, its records in priority order."""

    spills: Spills
    recipe: Recipe

    def run(self, task: list[np.ndarray]) -> dict[int, Removal]:
        removals: dict[int, Removal] = {}
        for ordinals in task:
            ordinals = ordinals.tolist()
            lines = [msgspec.json.decode(raw) for raw in self.spills.lines(ordinals)]
            removals.update((o, r) for o, r in zip(ordinals, deduplicate(lines, self.recipe.dedup)) if r is not None)
        return removals

    def units(self, task: list[np.ndarray], result: Any) -> int:
        return sum(len(c) for c in task)


def clean(tmp: Path, recipe: Recipe, lookups: Contamination, eval_copies: dict[int, tuple[str, str]],
          held: list[set[int]], counts: dict[str, SourceCounts], removed: Removed, contamination: IO[bytes],
          executor: Executor) -> None:
    """Pass 3: every source's spill, less its held-out positions, into .spill/<i>.kept.jsonl; sets
    each source's kept token counts and `available`. Removals go to `removed`, report-mode matches
    to `contamination`, all in line order."""
    recipe = with_absolute_paths(recipe)  # workers (Ray's included) may run in another directory
    spills = Spills([tmp / SPILL / f"{i}.jsonl" for i in range(len(recipe.sources))])
    staging = Staging.create(tmp / SPILL / KEYS)
    partitions = 4 * executor.workers
    blocks = spills.blocks(held)
    screened = list(executor.map(ScreenBlock(recipe, spills, lookups, eval_copies, staging, partitions), blocks))
    decided: dict[int, Removal] = {}
    for result in screened:
        decided |= result.pop("removals")
    if recipe.dedup.exact or recipe.dedup.near is not None:
        decided |= _duplicates(spills, recipe, staging, partitions, blocks, screened, executor)
    tokens = iter(np.concatenate([r["tokens"] for r in screened]).tolist() if screened else [])
    for i, spec in enumerate(recipe.sources):
        tally = counts[spec.name]
        with open(tmp / SPILL / f"{i}.kept.jsonl", "wb") as out:
            for block in (b for b in blocks if spills.firsts[i] <= b["first"] < spills.firsts[i + 1]):
                skip = set(block["held"])
                for k, raw in enumerate(spills.read(block["first"], block["count"])):
                    if k in skip:
                        continue
                    count = next(tokens)
                    removal = decided.get(block["first"] + k)
                    if removal is not None:
                        removed.add(msgspec.json.decode(raw), removal[0], **removal[1])
                    else:
                        out.write(raw)
                        tally.kept_tokens.append(count)
        tally.available = len(tally.kept_tokens)
    contamination.writelines(entry for result in screened for entry in result["reports"])


def _duplicates(spills: Spills, recipe: Recipe, staging: Staging, partitions: int, blocks: list[dict[str, Any]],
                screened: list[dict[str, Any]], executor: Executor) -> dict[int, Removal]:
    """The removals among the screened lines: their keys grouped by partition into components of the
    LSH's candidate graph, each component deduplicated alone."""
    eligible = np.concatenate([r["eligible"] for r in screened]) if screened else np.empty(0, dtype=np.int64)
    classes = np.concatenate([r["classes"] for r in screened]) if screened else np.empty(0, dtype="S16")
    _, first, inverse = np.unique(classes, return_index=True, return_inverse=True)
    reps = eligible[first[inverse]]  # each class by its first line
    components = Components(spills.total)
    if recipe.dedup.near is not None:
        tasks = [[(b["block"], int(r["splits"][p]), int(r["splits"][p + 1])) for b, r in zip(blocks, screened)
                  if r["splits"][p + 1] > r["splits"][p]] for p in range(partitions)]
        for buckets in executor.map(BucketKeys(staging), [t for t in tasks if t]):
            for members in buckets:
                components.union(members)
    groups = components.groups(eligible, reps)
    tasks, size = [], COMPONENT_LINES
    for group in groups:
        if size + len(group) > COMPONENT_LINES:
            tasks.append([])
            size = 0
        tasks[-1].append(group)
        size += len(group)
    decided: dict[int, Removal] = {}
    for removals in executor.map(DeduplicateComponents(spills, recipe), tasks):
        decided |= removals
    return decided
