"""Near duplicates found by grouping on band keys (`sftpack mix --ray`): the same decisions as the
local greedy search in pipeline/mixing/dedup.py, from a graph computed on the cluster.

    every line ──shingle hashes──> class (lines with the same shingle set: Jaccard 1 to each other)
               ──RMinHash digest, cut in the LSH's bands──> band keys
    band key ──its classes, each named by its first line (rep)──> a bucket (the same one from many keys: kept once)
    bucket ──every two reps: estimate >= threshold - CANDIDATE_MARGIN, exact Jaccard >= threshold──> edge (a, b, jaccard)
    driver, in priority order ──NearGraph.check──> near_duplicate of the kept record the local run names

Why the same: the local search compares a record with the kept records that share an LSH band with
it and keeps the one of highest exact Jaccard at or above the threshold (the earliest on ties),
after the same estimate filter. Lines of one class have one signature and one shingle set, so an
edge between two classes holds for every pair of their lines; a class keeps at most one record (a
second one has Jaccard 1 with it), and of a neighbour class only its kept record can be named.
The bands are rensa's (consecutive slices of the digest); rensa hashes a slice where this compares
its bytes, so the two differ only if rensa's 64-bit band hashes collide for a pair that passes both
Jaccard tests without sharing a band.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from sftpack.mixing.dedup import CANDIDATE_MARGIN, MINHASH_SEED, exact_jaccards, lsh_bands, shingle_hashes
from sftpack.mixing.recipe import NearDedup
from sftpack.mixing.text import shingles, turn_text, words


def candidate_threshold(cfg: NearDedup) -> float:
    return max(cfg.threshold - CANDIDATE_MARGIN, 0.05)  # as NearDuplicates


def line_keys(records: list[dict[str, Any]], cfg: NearDedup) -> tuple[list[bytes], list[list[str]]]:
    """Per record: its class (16 bytes naming its shingle set) and its band keys."""
    from rensa import RMinHash

    sets = [shingles(words(turn_text(r, cfg.on)), cfg.ngram) for r in records]
    classes = [hashlib.blake2b(shingle_hashes(s).tobytes(), digest_size=16).digest() for s in sets]
    bands = lsh_bands(candidate_threshold(cfg), cfg.num_perm)
    rows = cfg.num_perm // bands
    digests = np.array([m.digest() for m in RMinHash.from_token_sets(sets, num_perm=cfg.num_perm, seed=MINHASH_SEED)],
                       dtype=np.uint32).reshape(len(records), bands, rows)
    keys = [[f"{b}:{digest[b].tobytes().hex()}" for b in range(bands)] for digest in digests]
    return classes, keys


def bucket_members(ordinals: np.ndarray, classes: np.ndarray) -> list[int]:
    """The classes of one band key's lines, each named by its first line, sorted (a class's lines all
    share every band key, so its first line is in every bucket it is in)."""
    first: dict[bytes, int] = {}
    for ordinal, klass in zip(ordinals.tolist(), classes.tolist()):
        if klass not in first or ordinal < first[klass]:
            first[klass] = ordinal
    return sorted(first.values())


def similar_pairs(records: list[dict[str, Any]], cfg: NearDedup) -> list[tuple[int, int, float]]:
    """(i, j, exact Jaccard) for every two records i < j of one bucket that the local search would
    take: MinHash estimate at or above the candidate threshold, exact Jaccard at or above the
    threshold. One vectorised step per record (not per pair): a bucket of many near copies stays
    cheap. The numbers are NearDuplicates': rensa's estimate is the share of equal digest values,
    and the exact Jaccard is dedup.exact_jaccards of the same shingle hashes."""
    from rensa import RMinHash

    sets = [shingles(words(turn_text(r, cfg.on)), cfg.ngram) for r in records]
    digests = np.array([m.digest() for m in RMinHash.from_token_sets(sets, num_perm=cfg.num_perm, seed=MINHASH_SEED)],
                       dtype=np.uint32)
    hashes = [shingle_hashes(s) for s in sets]
    low = candidate_threshold(cfg)
    found = []
    for i in range(len(records) - 1):
        later = np.flatnonzero(np.count_nonzero(digests[i + 1:] == digests[i], axis=1) / cfg.num_perm >= low) + i + 1
        if len(later):
            similarity = exact_jaccards(hashes[i], [hashes[k] for k in later])
            found += [(i, int(k), float(v)) for k, v in zip(later, similarity) if v >= cfg.threshold]
    return found


class NearGraph:
    """The driver's side: decides, in priority order, what NearDuplicates.check decides, from the
    classes' edges (rep -> [(jaccard, neighbour rep)])."""

    def __init__(self, edges: dict[int, list[tuple[float, int]]]):
        self.edges = edges
        self.kept: dict[int, tuple[int, str]] = {}  # class rep -> (ordinal, id) of its kept record

    def check(self, rep: int, ordinal: int, record_id: str) -> tuple[str, float] | None:
        """(kept id, exact Jaccard) of the record it duplicates, or None and the record is kept.

        Args:
            rep: the first line of the record's class.
            ordinal: the record's line in priority order.
            record_id: its id, named by later duplicates when it is kept.
        """
        if rep in self.kept:
            return self.kept[rep][1], 1.0
        best: tuple[float, int, str] | None = None
        for similarity, other in self.edges.get(rep, ()):
            kept = self.kept.get(other)
            if kept is not None and (best is None or (similarity, -kept[0]) > (best[0], -best[1])):
                best = (similarity, kept[0], kept[1])
        if best is not None:
            return best[2], round(best[0], 4)
        self.kept[rep] = (ordinal, record_id)
        return None
