"""Duplicates across sources: exact (the conversation identity validate and report use) and near
(MinHash-LSH, rensa, proposes candidates; the exact Jaccard of the shingle sets decides). Records
arrive in priority order (source order, then row), so the first of each cluster is the one kept,
and a removed record names it.

    record ──conversation_hash──> seen? exact_duplicate of the first (Duplicates, below)
           ──words──shingles──RMinHash──> LSH candidates among kept records
                ──estimated Jaccard >= threshold - CANDIDATE_MARGIN──> candidates
                ──exact Jaccard of the shingle hash sets >= threshold──> near_duplicate of the closest
           ──else──> kept: signature into the LSH index, shingle hashes kept

The estimate alone is noisy at the threshold (sd ~0.03 at 128 permutations: bench/MIX.md), so it
only narrows the candidates; the decision and the reported `jaccard` are exact.
Memory: 8 bytes (a hash) per distinct conversation, and per kept one a signature (num_perm x 4
bytes), the LSH's band keys and its distinct shingles' 8-byte hashes; no text is held.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sftpack.checks.conversation_key import conversation_hash
from sftpack.mixing.passes import record_id
from sftpack.mixing.recipe import DedupConfig, NearDedup
from sftpack.mixing.text import shingles, turn_text, words

MINHASH_SEED = 1  # fixed: signatures of the same text are the same in every run and on every node
RECALL_AT_THRESHOLD = 0.995
# Candidates are pairs whose estimate is at least threshold - 0.15: over 4 standard deviations of
# the estimate (sqrt(t(1 - t) / num_perm) = 0.035 at 0.8 and 128 permutations), so a pair truly at
# the threshold is (practically) never missed.
CANDIDATE_MARGIN = 0.15


def lsh_bands(threshold: float, num_perm: int) -> int:
    """Bands for rensa's LSH: the fewest (longest rows, so the fewest candidates) whose chance of
    making a pair at exactly `threshold` a candidate, 1 - (1 - t^r)^b, is at least 0.995."""
    for bands in (b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1 - (1 - threshold ** rows) ** bands >= RECALL_AT_THRESHOLD:
            return bands
    return num_perm


def candidate_threshold(cfg: NearDedup) -> float:
    """The LSH's threshold: candidates reach CANDIDATE_MARGIN below the recipe's."""
    return max(cfg.threshold - CANDIDATE_MARGIN, 0.05)


def shingle_sets(records: list[dict[str, Any]], cfg: NearDedup,
                 all_words: list[list[str]] | None = None) -> list[list[str]]:
    """Each record's shingles; `all_words`, its words over every turn, are reused when the
    comparison is `on: all`."""
    if cfg.on != "all" or all_words is None:
        all_words = [words(turn_text(r, cfg.on)) for r in records]
    return [shingles(tokens, cfg.ngram) for tokens in all_words]


def signatures(sets: list[list[str]], cfg: NearDedup) -> list[Any]:
    """MinHash signatures of shingle lists (the same in every run and on every node). One sketch at a
    time: rensa's batch call (from_token_sets, the same digests) runs on a rayon thread pool, which
    hangs in a process forked after its parent used it (the local executor's workers)."""
    from rensa import RMinHash

    found = []
    for shingle_list in sets:
        signature = RMinHash(num_perm=cfg.num_perm, seed=MINHASH_SEED)
        signature.update(shingle_list)
        found.append(signature)
    return found


def shingle_hashes(shingle_list: list[str]) -> np.ndarray:
    """The distinct shingles as sorted 64-bit hashes (rensa's token hash: the same in every run)."""
    from rensa import RMinHash

    return np.unique(np.array(RMinHash.hash_token_sets([shingle_list])[0], dtype=np.uint64))


def exact_jaccards(hashes: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """Jaccard similarity of one sorted, distinct hash array with each of `others` (in one pass)."""
    sizes = np.fromiter(map(len, others), dtype=np.int64, count=len(others))
    joined = np.concatenate(others)
    found = hashes[np.searchsorted(hashes, joined).clip(max=len(hashes) - 1)] == joined
    common = np.add.reduceat(found, np.cumsum(sizes) - sizes, dtype=np.int64)  # no set is empty
    return common / (sizes + len(hashes) - common)


class NearDuplicates:
    """Greedy clustering in arrival order: a record joins the kept record with the highest exact
    Jaccard at or above the threshold, among the LSH's candidates."""

    def __init__(self, cfg: NearDedup):
        from rensa import RMinHashLSH

        self.cfg = cfg
        self.candidate_threshold = candidate_threshold(cfg)
        self.lsh = RMinHashLSH(threshold=self.candidate_threshold, num_perm=cfg.num_perm,
                               num_bands=lsh_bands(self.candidate_threshold, cfg.num_perm))
        self.kept: list[Any] = []  # signatures
        self.kept_shingles: list[np.ndarray] = []
        self.kept_ids: list[str] = []

    def find(self, signature: Any, hashes: np.ndarray) -> tuple[int, float] | None:
        """(index among the kept, exact Jaccard) of the most similar kept record at or above the
        threshold (the earliest on ties), or None.

        Args:
            signature: the record's MinHash signature (proposes candidates).
            hashes: its `shingle_hashes` (decide).
        """
        # rensa's estimate (fast, one call a candidate) narrows; the exact Jaccard decides
        keys = [k for k in sorted(self.lsh.query(signature)) if self.kept[k].jaccard(signature) >= self.candidate_threshold]
        if keys:
            similarity = exact_jaccards(hashes, [self.kept_shingles[k] for k in keys])
            best = int(np.argmax(similarity))  # the earliest of the most similar
            if similarity[best] >= self.cfg.threshold:
                return keys[best], round(float(similarity[best]), 4)
        return None

    def add(self, signature: Any, hashes: np.ndarray, record_id: str) -> None:
        """Keep a record: later ones are compared with it."""
        self.lsh.insert(len(self.kept), signature)
        self.kept.append(signature)
        self.kept_shingles.append(hashes)
        self.kept_ids.append(record_id)

    def check(self, signature: Any, hashes: np.ndarray, record_id: str) -> tuple[str, float] | None:
        """(kept id, exact Jaccard) of the record's near duplicate among the kept (`find`), or None,
        and the record is kept (`add`)."""
        found = self.find(signature, hashes)
        if found is not None:
            return self.kept_ids[found[0]], found[1]
        self.add(signature, hashes, record_id)
        return None


Removal = tuple[str, dict[str, Any]]  # (reason, details for removed.jsonl)


class Duplicates:
    """Exact, then near duplicates, for records arriving in priority order; a record's identity is
    remembered only once it is kept."""

    def __init__(self, cfg: DedupConfig):
        self.exact: dict[int, str] | None = {} if cfg.exact else None
        self.near = NearDuplicates(cfg.near) if cfg.near is not None else None

    def prepare(self, lines: list[dict[str, Any]], all_words: list[list[str]] | None = None) -> list[tuple[Any, Any]]:
        """(signature, shingles) of each record for `check` (one rensa call for the batch)."""
        if self.near is None:
            return [(None, None)] * len(lines)
        sets = shingle_sets(lines, self.near.cfg, all_words)
        return list(zip(signatures(sets, self.near.cfg), sets))

    def check(self, line: dict[str, Any], key: int, prepared: tuple[Any, Any]) -> Removal | None:
        """The removal of a record (conversation hash `key`), or None and it is kept."""
        if self.exact is not None and key in self.exact:
            return "exact_duplicate", {"kept": self.exact[key]}
        if self.near is not None:
            similar = self.near.check(prepared[0], shingle_hashes(prepared[1]), record_id(line))
            if similar is not None:
                return "near_duplicate", {"kept": similar[0], "jaccard": similar[1]}
        if self.exact is not None:
            self.exact[key] = record_id(line)
        return None


def deduplicate(lines: list[dict[str, Any]], cfg: DedupConfig) -> list[Removal | None]:
    """Duplicates' decisions for records in priority order (one component under --ray)."""
    duplicates = Duplicates(cfg)
    prepared = duplicates.prepare(lines)
    return [duplicates.check(line, conversation_hash(line), made) for line, made in zip(lines, prepared)]
