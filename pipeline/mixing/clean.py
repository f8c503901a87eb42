"""Pass 3 of the mix stage: what stays of each source after filters, conversation rules,
decontamination and deduplication, in that order, so that a record removed for any reason is never
the one a duplicate is kept in favour of.

    record ──filters──> filter_<name>
           ──conversation rules (checks.messages)──> rejected_<rule>
           ──an eval record's exact copy, or a benchmark n-gram──> contaminated (mode: remove)
           ──exact identity seen──> exact_duplicate {kept}
           ──MinHash-LSH candidates, exact Jaccard of shingle sets──> near_duplicate {kept, jaccard}
           ──> .spill/<i>.kept.jsonl

Under --ray the n-gram lookups and the near-duplicate graph come from the cluster
(pipeline/distributed/mix_tasks.py); the steps and their order are the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from sftpack.checks.conversation_key import conversation_hash
from sftpack.checks.messages import ROW_CHECKS
from sftpack.mixing.decontaminate import NgramIndex
from sftpack.mixing.dedup import NearDuplicates, shingle_hashes
from sftpack.mixing.filters import Filters
from sftpack.mixing.near_graph import NearGraph
from sftpack.mixing.passes import BATCH, SPILL, Removed, record_id, spill_lines
from sftpack.mixing.recipe import Recipe
from sftpack.mixing.text import turn_text, words

if TYPE_CHECKING:
    from sftpack.distributed.mix_tasks import ClusterLines


class Cleaner:
    """The removal steps, applied to records in priority order (source order, then row)."""

    def __init__(self, recipe: Recipe, removed: Removed, index: NgramIndex, eval_copies: dict[int, tuple[str, str]],
                 contamination: IO[bytes], cluster: "ClusterLines | None" = None):
        self.recipe, self.removed, self.index, self.eval_copies = recipe, removed, index, eval_copies
        self.contamination = contamination
        self.filters = Filters(recipe.filters, recipe.tokenizer)
        self.exact: dict[int, str] | None = {} if recipe.dedup.exact else None
        self.near: NearDuplicates | NearGraph | None = None
        if recipe.dedup.near is not None:
            self.near = NearGraph(cluster.edges) if cluster is not None else NearDuplicates(recipe.dedup.near)
        self.cluster_rows = cluster.rows() if cluster is not None else None  # (match, class rep) a line, in order
        self.ordinal = 0  # lines seen, held-out ones included (the cluster's line numbering)

    def _contaminated(self, key: int, probe: Probe) -> dict[str, Any] | None:
        copy = self.eval_copies.get(key) if self.eval_copies else None
        if copy is not None:  # an eval record too short for an n-gram still matches as an exact copy
            return {"benchmark": copy[0], "item": copy[1], "ngram": None}
        return probe.match if self.cluster_rows is not None else self.index.match(probe.words)

    def _decontaminate(self, line: dict[str, Any], key: int, probe: Probe) -> bool:
        """True when the record (conversation hash `key`) is removed; in report mode matches are
        listed and kept."""
        match = self._contaminated(key, probe)
        if match is None:
            return False
        if self.recipe.decontaminate.mode == "report":
            self.contamination.write((json.dumps({"id": record_id(line)} | match, ensure_ascii=False) + "\n").encode())
            return False
        self.removed.add(line, "contaminated", **match)
        return True

    def _near(self, line: dict[str, Any], probe: Probe) -> tuple[str, float] | None:
        if isinstance(self.near, NearGraph):
            return self.near.check(probe.rep, probe.ordinal, record_id(line))
        return self.near.check(probe.signature, shingle_hashes(probe.shingles), record_id(line))

    def _step(self, line: dict[str, Any], reason: str | None, probe: Probe) -> bool:
        """True when the record stays."""
        if reason is not None:
            self.removed.add(line, reason)
            return False
        errors = [e for check in ROW_CHECKS for e in check(line)]
        if errors:
            self.removed.add(line, f"rejected_{errors[0].rule}", errors=[e.as_dict() for e in errors])
            return False
        key = conversation_hash(line)
        if self._decontaminate(line, key, probe):
            return False
        if self.exact is not None and key in self.exact:
            self.removed.add(line, "exact_duplicate", kept=self.exact[key])
            return False
        if self.near is not None:
            similar = self._near(line, probe)
            if similar is not None:
                self.removed.add(line, "near_duplicate", kept=similar[0], jaccard=similar[1])
                return False
        if self.exact is not None:
            self.exact[key] = record_id(line)
        return True

    def batch(self, raws: list[bytes], out: IO[bytes], tokens_out: list[int], probes: list[Probe]) -> None:
        """Clean one batch of spill lines; survivors to `out`, their token counts to `tokens_out`.
        Locally each line's words, shingles and signature are made here; under --ray the cluster
        has already looked up its match and class (`probes`)."""
        lines = [msgspec.json.decode(raw) for raw in raws]
        tokens = self.filters.tokens(lines)
        reasons = self.filters.reasons(lines, tokens)
        if self.cluster_rows is None:
            all_words = [words(turn_text(line)) for line in lines]  # once, for decontamination and near dedup
            sets = self.near.shingle_sets(lines, all_words) if self.near is not None else [None] * len(lines)
            signatures = self.near.signatures_of(sets) if self.near is not None else [None] * len(lines)
            for probe, *made in zip(probes, all_words, sets, signatures):
                probe.words, probe.shingles, probe.signature = made
        for i, (raw, line) in enumerate(zip(raws, lines)):
            if self._step(line, reasons[i], probes[i]):
                out.write(raw)
                tokens_out.append(tokens[i] if tokens is not None else 0)

    def source(self, tmp: Path, index: int, held: set[int], tokens_out: list[int]) -> int:
        """Clean one source's spill (skipping held-out positions); returns how many stay."""
        pending: list[bytes] = []
        probes: list[Probe] = []
        with open(tmp / SPILL / f"{index}.kept.jsonl", "wb") as out:
            for position, raw in spill_lines(tmp / SPILL / f"{index}.jsonl"):
                probe = Probe(self.ordinal)
                self.ordinal += 1
                if self.cluster_rows is not None:
                    probe.match, probe.rep = next(self.cluster_rows)
                if position in held:
                    continue
                pending.append(raw)
                probes.append(probe)
                if len(pending) >= BATCH:
                    self.batch(pending, out, tokens_out, probes)
                    pending, probes = [], []
            if pending:
                self.batch(pending, out, tokens_out, probes)
        return len(tokens_out)


@dataclass
class Probe:
    """What the checks need of one line beyond the record: made locally (words, shingles,
    signature) or by the cluster (match, rep: pipeline/distributed/mix_tasks.py)."""

    ordinal: int
    words: list[str] = field(default_factory=list)
    shingles: list[str] | None = None
    signature: Any = None
    match: dict[str, Any] | None = None
    rep: int = -1
