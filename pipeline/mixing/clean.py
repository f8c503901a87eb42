"""Pass 3 of the mix stage: what stays of each source after filters, conversation rules,
decontamination and deduplication, in that order, so that a record removed for any reason is never
the one a duplicate is kept in favour of.

    record ──filters──> filter_<name>                                            ┐ screen
           ──conversation rules (checks.messages)──> rejected_<rule>             │
           ──an eval record's copy or near copy, a benchmark n-gram──> contaminated ┘ (mode: remove)
           ──exact identity seen──> exact_duplicate {kept}                       ┐ Duplicates
           ──MinHash-LSH candidates, exact Jaccard of shingle sets──> near_duplicate {kept, jaccard} ┘
           ──> .spill/<i>.kept.jsonl

Locally one pass does it all. On a Ray cluster with near dedup (pipeline/mixing/on_cluster.py) the
cluster looks up each line's contamination (decontaminate.Contamination) and groups lines into
components of the LSH's candidate graph; a first pass screens here in order, Duplicates runs per component on the nodes
(pipeline/mixing/near_graph.py says why that decides the same), and a last pass writes every
decision in order: the same files.
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import IO, Any, Iterator

import msgspec
import numpy as np

from sftpack.checks.conversation_key import conversation_hash
from sftpack.checks.messages import ROW_CHECKS
from sftpack.mixing.decontaminate import Contamination
from sftpack.mixing.dedup import Duplicates, Removal
from sftpack.mixing.filters import Filters
from sftpack.mixing.passes import BATCH, SPILL, Removed, SourceCounts, record_id, spill_lines
from sftpack.mixing.recipe import Recipe
from sftpack.mixing.text import conversation_words

class Cleaner:
    """The removal steps, applied to records in priority order (source order, then row)."""

    def __init__(self, recipe: Recipe, removed: Removed, lookups: Contamination, eval_copies: dict[int, tuple[str, str]],
                 contamination: IO[bytes], cluster: Any = None):
        """`cluster`: a mixing.on_cluster.ClusterLines on a Ray cluster."""
        self.recipe, self.removed, self.lookups, self.eval_copies = recipe, removed, lookups, eval_copies
        self.contamination = contamination
        self.filters = Filters(recipe.filters, recipe.tokenizer)
        self.duplicates = Duplicates(recipe.dedup)
        self.cluster = cluster

    def _screen(self, line: dict[str, Any], reason: str | None, found: dict[str, Any] | None) -> tuple[Removal | None, int]:
        """Filters, conversation rules, decontamination: (removal or None, conversation hash; 0
        when not reached). `found`: the record's near eval copy or benchmark match
        (decontaminate.Contamination); in report mode a match is listed and the record stays."""
        if reason is not None:
            return (reason, {}), 0
        errors = [e for check in ROW_CHECKS for e in check(line)]
        if errors:
            return (f"rejected_{errors[0].rule}", {"errors": [e.as_dict() for e in errors]}), 0
        key = conversation_hash(line)
        copy = self.eval_copies.get(key) if self.eval_copies else None
        # the same conversation as an eval record (its text may differ: tool-call keys in another order)
        match = {"benchmark": copy[0], "item": copy[1], "jaccard": 1.0} if copy is not None else found
        if match is None:
            return None, key
        if self.recipe.decontaminate.mode == "report":
            self.contamination.write((json.dumps({"id": record_id(line)} | match, ensure_ascii=False) + "\n").encode())
            return None, key
        return ("contaminated", match), key

    def run(self, tmp: Path, held: list[set[int]], lines: list[int], counts: dict[str, SourceCounts]) -> None:
        """Clean every source's spill (`lines` lines each) into .spill/<i>.kept.jsonl, skipping the
        held-out positions; sets each source's kept token counts and `available`."""
        offsets = np.cumsum([0] + lines[:-1]).tolist()
        if self.cluster is not None and self.duplicates.near is not None:
            self._run_on_cluster(tmp, held, offsets, counts)
            return
        matches = self.cluster.rows() if self.cluster is not None else None
        for i, spec in enumerate(self.recipe.sources):
            tally = counts[spec.name]
            with open(tmp / SPILL / f"{i}.kept.jsonl", "wb") as out:
                for raws, _, cluster_rows in _batches(tmp, i, held[i], offsets[i], matches):
                    self._batch(raws, cluster_rows if matches is not None else None, out, tally.kept_tokens)
            tally.available = len(tally.kept_tokens)

    def _batch(self, raws: list[bytes], cluster_rows: list | None, out: IO[bytes], tokens_out: list[int]) -> None:
        """One batch in one pass: survivors to `out`, their token counts to `tokens_out`."""
        lines = [msgspec.json.decode(raw) for raw in raws]
        tokens = self.filters.tokens(lines)
        reasons = self.filters.reasons(lines, tokens)
        dialogues, all_words = zip(*map(conversation_words, lines)) if lines else ((), ())  # each turn split once
        prepared = self.duplicates.prepare(lines, list(all_words))
        found = [row[0] for row in cluster_rows] if cluster_rows else self.lookups.matches(list(dialogues))
        for i, (raw, line) in enumerate(zip(raws, lines)):
            removal, key = self._screen(line, reasons[i], found[i])
            if removal is None:
                removal = self.duplicates.check(line, key, prepared[i])
            if removal is not None:
                self.removed.add(line, removal[0], **removal[1])
                continue
            out.write(raw)
            tokens_out.append(tokens[i] if tokens is not None else 0)

    def _run_on_cluster(self, tmp: Path, held: list[set[int]], offsets: list[int], counts: dict[str, SourceCounts]) -> None:
        """Screen in order, deduplicate per component on the nodes, then write every decision in order."""
        decided: dict[int, Removal] = {}
        tokens, eligible, reps = array("q"), array("q"), array("q")
        rows = self.cluster.rows()
        for i in range(len(self.recipe.sources)):
            for raws, ordinals, cluster_rows in _batches(tmp, i, held[i], offsets[i], rows):
                lines = [msgspec.json.decode(raw) for raw in raws]
                counted = self.filters.tokens(lines)
                reasons = self.filters.reasons(lines, counted)
                for k, (line, ordinal, (match, rep)) in enumerate(zip(lines, ordinals, cluster_rows)):
                    tokens.append(counted[k] if counted is not None else 0)
                    removal, _ = self._screen(line, reasons[k], match)
                    if removal is not None:
                        decided[ordinal] = removal
                    else:
                        eligible.append(ordinal)
                        reps.append(rep)
        decided |= self.cluster.deduplicate(np.frombuffer(eligible, dtype=np.int64), np.frombuffer(reps, dtype=np.int64),
                                            self.recipe.dedup)
        counted_tokens = iter(tokens)
        for i, spec in enumerate(self.recipe.sources):
            tally = counts[spec.name]
            with open(tmp / SPILL / f"{i}.kept.jsonl", "wb") as out:
                for raws, ordinals, _ in _batches(tmp, i, held[i], offsets[i], None):
                    for raw, ordinal in zip(raws, ordinals):
                        count = next(counted_tokens)
                        removal = decided.get(ordinal)
                        if removal is not None:
                            self.removed.add(msgspec.json.decode(raw), removal[0], **removal[1])
                        else:
                            out.write(raw)
                            tally.kept_tokens.append(count)
            tally.available = len(tally.kept_tokens)


def _batches(tmp: Path, index: int, held: set[int], offset: int,
             rows: Iterator | None) -> Iterator[tuple[list[bytes], list[int], list]]:
    """One source's spill lines that are not held out, in batches: (raw lines, their ordinals among
    all sources' lines, their cluster rows). `rows` (the cluster's, one a line held-out ones
    included) are consumed in step; without them the third list holds Nones."""
    raws: list[bytes] = []
    ordinals: list[int] = []
    extra: list = []
    for position, raw in spill_lines(tmp / SPILL / f"{index}.jsonl"):
        row = next(rows) if rows is not None else None
        if position in held:
            continue
        raws.append(raw)
        ordinals.append(offset + position)
        extra.append(row)
        if len(raws) >= BATCH:
            yield raws, ordinals, extra
            raws, ordinals, extra = [], [], []
    if raws:
        yield raws, ordinals, extra
