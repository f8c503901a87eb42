"""Duplicates per component (mixing/tasks.py, locally and on Ray): the records are split into the
components of the LSH's candidate graph, and each component is deduplicated alone by mixing.dedup.

    every line ──shingle hashes, conversation hash──> class (lines with the same shingle set and hash)
               ──RMinHash digest, cut in the LSH's bands──> band keys
               ──conversation hash (with exact dedup)──> one more key
    key ──its classes, each named by its first line (rep)──> a bucket ──union──> components
    the records that reach deduplication, per component of two or more, in priority order
               ──mixing.dedup.Duplicates (exact, then NearDuplicates: rensa LSH, exact Jaccard)──> decisions

Why the same as one pass of Duplicates over every record: a record's exact duplicates share its
conversation-hash key (not always its shingle set: tool-call arguments may list their keys in
another order), and the records the LSH proposes for it share a band with it, so a bucket; both are
in its component. Each component thus sees, in priority order, every record that can decide one of
its own. The bands are rensa's (consecutive slices of the digest); rensa hashes a slice where this
compares its bytes, so the two differ only if rensa's 64-bit band hashes collide for a pair that
passes both Jaccard tests without sharing a band.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from sftpack.mixing.dedup import candidate_threshold, lsh_bands, shingle_hashes, shingle_sets, signatures
from sftpack.mixing.recipe import NearDedup


def line_keys(records: list[dict[str, Any]], cfg: NearDedup, all_words: list[list[str]],
              exact: list[bytes]) -> tuple[list[bytes], list[list[bytes]]]:
    """Per record: its class (16 bytes naming its shingle set and its conversation hash, `exact`) and
    its band keys; `all_words` as dedup.shingle_sets takes them."""
    sets = shingle_sets(records, cfg, all_words)
    classes = [hashlib.blake2b(shingle_hashes(s).tobytes() + key, digest_size=16).digest()
               for s, key in zip(sets, exact)]
    bands = lsh_bands(candidate_threshold(cfg), cfg.num_perm)
    rows = cfg.num_perm // bands
    digests = np.array([m.digest() for m in signatures(sets, cfg)], dtype=np.uint32).reshape(len(records), bands, rows)
    keys = [[b.to_bytes(2, "little") + digest[b].tobytes() for b in range(bands)] for digest in digests]
    return classes, keys


def key_width(cfg: NearDedup) -> int:
    """Bytes of a band key: the band's number (2) and its slice of the digest (4 a row)."""
    return 2 + 4 * (cfg.num_perm // lsh_bands(candidate_threshold(cfg), cfg.num_perm))


def bucket_members(ordinals: np.ndarray, classes: np.ndarray) -> list[int]:
    """The classes of one band key's lines, each named by its first line, sorted (a class's lines all
    share every band key, so its first line is in every bucket it is in)."""
    first: dict[bytes, int] = {}
    for ordinal, klass in zip(ordinals.tolist(), classes.tolist()):
        if klass not in first or ordinal < first[klass]:
            first[klass] = ordinal
    return sorted(first.values())


class Components:
    """Union-find over the lines' ordinals (vectorised: one numpy step per bucket, not per line)."""

    def __init__(self, lines: int):
        self.parent = np.arange(lines, dtype=np.int64)

    def roots(self, ordinals: np.ndarray) -> np.ndarray:
        current = np.asarray(ordinals, dtype=np.int64)
        while True:
            parent = self.parent[current]
            if np.array_equal(parent, current):
                return current
            self.parent[current] = self.parent[parent]  # path halving
            current = self.parent[current]

    def union(self, members: np.ndarray) -> None:
        roots = np.unique(self.roots(members))
        self.parent[roots] = roots[0]

    def groups(self, ordinals: np.ndarray, reps: np.ndarray) -> list[np.ndarray]:
        """`ordinals` (ascending) split by the component of their class `reps`; only groups of two or more."""
        roots = self.roots(reps)
        order = np.argsort(roots, kind="stable")
        cuts = np.flatnonzero(np.diff(roots[order])) + 1
        return [ordinals[g] for g in np.split(order, cuts) if len(g) > 1]
