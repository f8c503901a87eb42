"""Duplicates across sources: exact (the conversation identity validate and report use) and near
(MinHash-LSH, rensa). Records arrive in priority order (source order, then row), so the first of
each cluster is the one kept, and a removed record names it.

    record ──conversation_hash──> seen? exact_duplicate of the first (pipeline/mixing/clean.py)
           ──words──shingles──RMinHash──> LSH candidates among kept records
                                          ──estimated Jaccard >= threshold──> near_duplicate of the closest
                                          ──else──> kept, inserted into the LSH index

Memory: 8 bytes (a hash) per distinct conversation, and a signature (num_perm x 4 bytes) plus the
LSH's band keys per kept one; no text is held.
"""

from __future__ import annotations

from typing import Any

from sftpack.mixing.recipe import NearDedup
from sftpack.mixing.text import shingles, turn_text, words

MINHASH_SEED = 1  # fixed: signatures of the same text are the same in every run and on every node
RECALL_AT_THRESHOLD = 0.995


def lsh_bands(threshold: float, num_perm: int) -> int:
    """Bands for rensa's LSH: the fewest (longest rows, so the fewest candidates) whose chance of
    making a pair at exactly `threshold` a candidate, 1 - (1 - t^r)^b, is at least 0.995."""
    for bands in (b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1 - (1 - threshold ** rows) ** bands >= RECALL_AT_THRESHOLD:
            return bands
    return num_perm


class NearDuplicates:
    """Greedy clustering in arrival order: a record joins the closest kept record it is similar to."""

    def __init__(self, cfg: NearDedup):
        from rensa import RMinHash, RMinHashLSH

        self.cfg = cfg
        self._minhash = RMinHash
        self.lsh = RMinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm,
                               num_bands=lsh_bands(cfg.threshold, cfg.num_perm))
        self.kept: list[Any] = []
        self.kept_ids: list[str] = []

    def signatures(self, records: list[dict[str, Any]], all_words: list[list[str]]) -> list[Any]:
        """MinHash signatures of a batch (one call into rensa); `all_words` are the records' words over
        every turn, reused when the comparison is `on: all`."""
        if self.cfg.on != "all":
            all_words = [words(turn_text(r, self.cfg.on)) for r in records]
        sets = [shingles(tokens, self.cfg.ngram) for tokens in all_words]
        return self._minhash.from_token_sets(sets, num_perm=self.cfg.num_perm, seed=MINHASH_SEED)

    def check(self, signature: Any, record_id: str) -> tuple[str, float] | None:
        """(kept id, estimated Jaccard) of the most similar kept record at or above the threshold
        (the earliest on ties), or None, and the record is kept."""
        best: tuple[int, float] | None = None
        for key in sorted(self.lsh.query(signature)):
            similarity = self.kept[key].jaccard(signature)
            if similarity >= self.cfg.threshold and (best is None or similarity > best[1]):
                best = (key, similarity)
        if best is not None:
            return self.kept_ids[best[0]], round(best[1], 4)
        self.lsh.insert(len(self.kept), signature)
        self.kept.append(signature)
        self.kept_ids.append(record_id)
        return None
