"""Pass 3 of the mix stage: what stays of each source after filters, conversation rules,
decontamination and deduplication, in that order, so that a record removed for any reason is never
the one a duplicate is kept in favour of.

    record ──filters──> filter_<name>
           ──conversation rules (checks.messages)──> rejected_<rule>
           ──an eval record's exact copy, or a benchmark n-gram──> contaminated (mode: remove)
           ──exact identity seen──> exact_duplicate {kept}
           ──MinHash-LSH candidates, exact Jaccard of shingle sets──> near_duplicate {kept, jaccard}
           ──> .spill/<i>.kept.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import msgspec

from sftpack.checks.conversation_key import conversation_hash
from sftpack.checks.messages import ROW_CHECKS
from sftpack.mixing.decontaminate import NgramIndex
from sftpack.mixing.dedup import NearDuplicates, shingle_hashes
from sftpack.mixing.filters import Filters
from sftpack.mixing.passes import BATCH, SPILL, Removed, record_id, spill_lines
from sftpack.mixing.recipe import Recipe
from sftpack.mixing.text import turn_text, words


class Cleaner:
    """The removal steps, applied to records in priority order (source order, then row)."""

    def __init__(self, recipe: Recipe, removed: Removed, index: NgramIndex, eval_copies: dict[int, tuple[str, str]],
                 contamination: IO[bytes], ray: bool = False):
        self.recipe, self.removed, self.index, self.eval_copies = recipe, removed, index, eval_copies
        self.ray = ray and recipe.dedup.near is not None  # signatures in Ray Data map tasks (--ray)
        self.contamination = contamination
        self.filters = Filters(recipe.filters, recipe.tokenizer)
        self.exact: dict[int, str] | None = {} if recipe.dedup.exact else None
        self.near = NearDuplicates(recipe.dedup.near) if recipe.dedup.near is not None else None

    def _contaminated(self, key: int, text_words: list[str]) -> dict[str, Any] | None:
        copy = self.eval_copies.get(key) if self.eval_copies else None
        if copy is not None:  # an eval record too short for an n-gram still matches as an exact copy
            return {"benchmark": copy[0], "item": copy[1], "ngram": None}
        return self.index.match(text_words)

    def _decontaminate(self, line: dict[str, Any], key: int, text_words: list[str]) -> bool:
        """True when the record (conversation hash `key`) is removed; in report mode matches are
        listed and kept."""
        match = self._contaminated(key, text_words)
        if match is None:
            return False
        if self.recipe.decontaminate.mode == "report":
            self.contamination.write((json.dumps({"id": record_id(line)} | match, ensure_ascii=False) + "\n").encode())
            return False
        self.removed.add(line, "contaminated", **match)
        return True

    def _step(self, line: dict[str, Any], reason: str | None, text_words: list[str], near: tuple[Any, Any]) -> bool:
        """True when the record stays."""
        if reason is not None:
            self.removed.add(line, reason)
            return False
        errors = [e for check in ROW_CHECKS for e in check(line)]
        if errors:
            self.removed.add(line, f"rejected_{errors[0].rule}", errors=[e.as_dict() for e in errors])
            return False
        key = conversation_hash(line)
        if self._decontaminate(line, key, text_words):
            return False
        if self.exact is not None and key in self.exact:
            self.removed.add(line, "exact_duplicate", kept=self.exact[key])
            return False
        if self.near is not None:
            similar = self.near.check(near[0], shingle_hashes(near[1]), record_id(line))
            if similar is not None:
                self.removed.add(line, "near_duplicate", kept=similar[0], jaccard=similar[1])
                return False
        if self.exact is not None:
            self.exact[key] = record_id(line)
        return True

    def batch(self, raws: list[bytes], out: IO[bytes], tokens_out: list[int], signatures: list | None = None) -> None:
        """Clean one batch of spill lines; survivors to `out`, their token counts to `tokens_out`.
        `signatures` come from the cluster under --ray; else they are computed here. The shingles
        are always made here: the exact Jaccard that decides a near duplicate needs them."""
        lines = [msgspec.json.decode(raw) for raw in raws]
        tokens = self.filters.tokens(lines)
        reasons = self.filters.reasons(lines, tokens)
        all_words = [words(turn_text(line)) for line in lines]  # once, for decontamination and near dedup
        sets = self.near.shingle_sets(lines, all_words) if self.near is not None else [None] * len(lines)
        if signatures is None:
            signatures = self.near.signatures_of(sets) if self.near is not None else [None] * len(lines)
        for i, (raw, line) in enumerate(zip(raws, lines)):
            if self._step(line, reasons[i], all_words[i], (signatures[i], sets[i])):
                out.write(raw)
                tokens_out.append(tokens[i] if tokens is not None else 0)

    def source(self, tmp: Path, index: int, held: set[int], tokens_out: list[int], lines: int) -> int:
        """Clean one source's spill of `lines` lines (skipping held-out positions); returns how many stay."""
        spill = tmp / SPILL / f"{index}.jsonl"
        remote = None
        if self.ray:
            from sftpack.distributed.minhash import spill_signatures

            remote = spill_signatures(spill, self.recipe.dedup.near, lines)
        pending: list[bytes] = []
        signatures: list | None = [] if remote is not None else None
        with open(tmp / SPILL / f"{index}.kept.jsonl", "wb") as out:
            for position, raw in spill_lines(spill):
                signature = next(remote) if remote is not None else None
                if position in held:
                    continue
                pending.append(raw)
                if signatures is not None:
                    signatures.append(signature)
                if len(pending) >= BATCH:
                    self.batch(pending, out, tokens_out, signatures)
                    pending, signatures = [], [] if remote is not None else None
            if pending:
                self.batch(pending, out, tokens_out, signatures)
        return len(tokens_out)
