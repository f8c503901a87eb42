"""Bin packing of example lengths into rows of at most `capacity` tokens.

Pure functions over lengths only: the token data itself never enters memory here.

    row 0: [ ex 17 (900)          | ex 3 (100) ]   seq_lengths = [900, 100]
    row 1: [ ex 5 (600)   | ex 9 (300) | ex 2 (90) ]  seq_lengths = [600, 300, 90]

Sequences are never split across rows; each row's lengths sum to at most `capacity`.

`pack_bins` is what the pack stage uses: best-fit-decreasing, then a short local search that
empties rows while it can, stopping at the Martello-Toth bound `l2_lower_bound` (no packing can
do better) or when its work budget is spent. It never returns more rows than BFD. From LARGE_INPUT
items on it packs from per-length counts instead (pipeline/packing/counts.py).
"""

from __future__ import annotations

import bisect
import heapq
import math

import numpy as np

from sftpack.packing.counts import length_counts, pack_counts

SEARCH_EFFORT = 40_000
"""Default work budget of `pack_bins`: bin evaluations of the local search (about 20 us each,
so under a second); fixed work rather than a clock keeps the result deterministic."""


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Pack items (by index) into bins with best-fit-decreasing.

    Items are taken longest first (ties by index, so the result is deterministic); each goes
    into the open bin whose remaining space is the smallest that still fits it, or a new bin.
    The open bins are kept in buckets by remaining space, and a Python int serves as the
    bitset of non-empty buckets, so finding the best bin is one shift and one lowest-bit.

    Args:
        lengths: item lengths, each in [1, capacity].
        capacity: the bin size (max_length).

    Returns:
        Bins as lists of item indices, in the order the bins were opened.

    Raises:
        ValueError: an item longer than `capacity` or shorter than 1.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"lengths must lie in [1, {capacity}]")
    order = np.lexsort((np.arange(lengths.size), -lengths))
    bins: list[list[int]] = []
    buckets: list[list[int]] = [[] for _ in range(capacity + 1)]  # remaining space -> bin ids
    nonempty = 0  # bit r set <=> buckets[r] has a bin
    for index, size in zip(order.tolist(), lengths[order].tolist()):
        fits = nonempty >> size
        if fits:
            remaining = size + ((fits & -fits).bit_length() - 1)
            bucket = buckets[remaining]
            bin_id = bucket.pop()
            if not bucket:
                nonempty &= ~(1 << remaining)
            bins[bin_id].append(index)
        else:
            bin_id = len(bins)
            bins.append([index])
            remaining = capacity
        left = remaining - size
        if left > 0:
            buckets[left].append(bin_id)
            nonempty |= 1 << left
    return bins


LARGE_INPUT = 2_000_000
"""From this many items on, `pack_bins` packs by per-length counts (`pack_counts`) and returns
`PackedRows`: 100M Python lists of indices would need ~10 GB, and the local search's fixed budget
(SEARCH_EFFORT bin evaluations) could empty a few dozen of a million rows at most."""


def one_per_row(lengths: np.ndarray) -> list[list[int]]:
    """No packing: every item in its own row, in input order."""
    return [[i] for i in range(len(lengths))]


def lower_bound_rows(total_tokens: int, capacity: int) -> int:
    """No packing can use fewer rows than ceil(tokens / capacity)."""
    return math.ceil(total_tokens / capacity) if total_tokens else 0


def l2_lower_bound(lengths: np.ndarray, capacity: int) -> int:
    """Martello-Toth L2 lower bound on the number of bins; never below ceil(tokens / capacity).

    For each threshold K in [0, capacity/2]: items longer than capacity-K (J1) each need a bin
    that nothing of length >= K can join; items in (capacity/2, capacity-K] (J2) each need
    their own bin too; items in [K, capacity/2] (J3) fill J2's free space and then whole bins:

        L(K) = |J1| + |J2| + max(0, ceil((sum J3 - (|J2| * capacity - sum J2)) / capacity))

    and L2 = max over K. Computed for every integer K at once from per-length counts, O(capacity).

    Args:
        lengths: item lengths, each in [1, capacity].
        capacity: the bin size.

    Returns:
        The bound (0 for no items).

    Raises:
        ValueError: an item longer than `capacity` or shorter than 1.
    """
    w = np.asarray(lengths)
    if w.size and (int(w.max()) > capacity or int(w.min()) < 1):
        raise ValueError(f"lengths must lie in [1, {capacity}]")
    if w.size == 0:
        return 0
    count = length_counts(w, capacity)
    below = np.concatenate(([0], np.cumsum(count)))  # below[v] = items shorter than v
    below_tokens = np.concatenate(([0], np.cumsum(count * np.arange(capacity + 1))))
    half = capacity // 2  # "<= capacity/2" is "<= half" for integers, odd capacity included
    k = np.arange(half + 1)
    n1 = w.size - below[capacity - k + 1]
    n2 = below[capacity - k + 1] - below[half + 1]
    s2 = below_tokens[capacity - k + 1] - below_tokens[half + 1]
    s3 = below_tokens[half + 1] - below_tokens[k]
    spill = s3 - (n2 * capacity - s2)
    return int((n1 + n2 + np.maximum(0, -(-spill // capacity))).max())


def pack_bins(lengths: np.ndarray, capacity: int, *, effort: int = SEARCH_EFFORT,
              seed: int = 0) -> list[list[int]]:
    """Pack items (by index) into as few bins as a short local search finds, never more than BFD.

    Starts from `best_fit_decreasing`. If that is above `l2_lower_bound`, each round of the
    search takes the two least-filled bins and three random ones apart into a pool, then moves
    pool items into a sample of bins with free space, swapping out up to two smaller items for
    up to two larger ones whenever that makes the bin fuller (the "dominance" exchange of
    Levine & Ducatelle 2004). The pool only ever gets smaller items back, so what is left is
    re-packed by BFD into fewer or equally many bins. A round is kept if it uses fewer bins, or
    as many with a larger sum of squared loads (space concentrated in the emptiest bins, which
    the next rounds empty); otherwise it is undone.

    Args:
        lengths: item lengths, each in [1, capacity].
        capacity: the bin size (max_length).
        effort: work budget in bin evaluations; 0 gives plain BFD.
        seed: seeds the random choices; the same inputs always give the same bins.

    From LARGE_INPUT items on: `pack_counts`, as PackedRows (see LARGE_INPUT).

    Returns:
        Bins as lists of item indices, each bin longest item first (ties by index); PackedRows
        from LARGE_INPUT items on.

    Raises:
        ValueError: an item longer than `capacity` or shorter than 1.
    """
    if np.size(lengths) >= LARGE_INPUT:
        return pack_counts(lengths, capacity)
    w = _checked(lengths, capacity)
    bins = best_fit_decreasing(w, capacity)
    floor = l2_lower_bound(w, capacity)
    if len(bins) <= floor or effort <= 0:
        return bins
    bins = _LocalSearch(w.tolist(), capacity, bins, seed).run(floor, effort)
    size = w.tolist()
    return [sorted(b, key=lambda i: (-size[i], i)) for b in bins]


def _checked(lengths: np.ndarray, capacity: int) -> np.ndarray:
    w = np.asarray(lengths, dtype=np.int64)
    if w.size and (w.max() > capacity or w.min() < 1):
        raise ValueError(f"lengths must lie in [1, {capacity}]")
    return w


class _Pool:
    """Items taken out of their bins, indexed by length for "largest single or pair <= t"."""

    def __init__(self, items: list[int], size: list[int]):
        self.size = size
        self.by_length: dict[int, list[int]] = {}
        self.add(items)
        self.reindex()

    def add(self, items) -> None:
        for i in items:
            self.by_length.setdefault(self.size[i], []).append(i)

    def take(self, lengths) -> list[int]:
        taken = []
        for length in lengths:
            bucket = self.by_length[length]
            taken.append(bucket.pop())
            if not bucket:
                del self.by_length[length]
        return taken

    def reindex(self) -> None:
        """Sorted distinct lengths and distinct pair totals (pairs over lengths, so O(d^2))."""
        self.lengths = sorted(self.by_length)
        pairs: dict[int, tuple[int, int]] = {}
        for a, la in enumerate(self.lengths):
            if len(self.by_length[la]) > 1:
                pairs.setdefault(2 * la, (la, la))
            for lb in self.lengths[a + 1:]:
                pairs.setdefault(la + lb, (la, lb))
        self.pair_totals = sorted(pairs)
        self.pairs = pairs

    def items(self) -> list[int]:
        return [i for length in sorted(self.by_length, reverse=True) for i in self.by_length[length]]

    def __bool__(self) -> bool:
        return bool(self.by_length)


def _best_exchange(items: list[int], free: int, size: list[int],
                   pool: _Pool) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """The exchange that raises this bin's load most, by at most `free`.

    Out: nothing, one or two of the bin's items; in: one or two pool items, longer in total.

    Returns:
        (gain, bin items out, pool lengths in); gain 0 when nothing helps.
    """
    by_length: dict[int, list[int]] = {}
    for i in items:
        by_length.setdefault(size[i], []).append(i)
    outs: list[tuple[int, tuple[int, ...]]] = [(0, ())]
    distinct = sorted(by_length)
    for a, la in enumerate(distinct):
        first = by_length[la][0]
        outs.append((la, (first,)))
        if len(by_length[la]) > 1:
            outs.append((2 * la, (first, by_length[la][1])))
        for lb in distinct[a + 1:]:
            outs.append((la + lb, (first, by_length[lb][0])))
    singles, totals = pool.lengths, pool.pair_totals
    best = (0, (), ())
    for out_tokens, out in outs:
        top = out_tokens + free
        k = bisect.bisect_right(singles, top) - 1
        if k >= 0 and singles[k] - out_tokens > best[0]:
            best = (singles[k] - out_tokens, out, (singles[k],))
        k = bisect.bisect_right(totals, top) - 1
        if k >= 0 and totals[k] - out_tokens > best[0]:
            best = (totals[k] - out_tokens, out, pool.pairs[totals[k]])
        if best[0] == free:
            break
    return best


class _LocalSearch:
    """State of `pack_bins`' improvement phase: bins by slot (emptied slots stay as [])."""

    LEAST, RANDOM, SCAN = 2, 3, 32  # bins freed: least-filled, random; bins offered the pool

    def __init__(self, size: list[int], capacity: int, bins: list[list[int]], seed: int):
        self.size, self.capacity = size, capacity
        self.rng = np.random.default_rng(seed)
        self.bins = [list(b) for b in bins]
        self.load = [sum(size[i] for i in b) for b in bins]
        self.heap = [(ld, b) for b, ld in enumerate(self.load)]  # lazy: stale entries skipped
        heapq.heapify(self.heap)
        self.nonfull = [b for b, ld in enumerate(self.load) if ld < capacity]
        self.where = {b: k for k, b in enumerate(self.nonfull)}

    def run(self, floor: int, effort: int) -> list[list[int]]:
        count = len(self.bins)
        while count > floor and effort > 0:
            saved, spent = self._round()
            count -= saved
            effort -= spent
        return [b for b in self.bins if b]

    def _round(self) -> tuple[int, int]:
        """One take-apart-and-refill round; returns (bins saved, evaluations spent)."""
        bins, load, size = self.bins, self.load, self.size
        freed, popped = self._take_apart()
        undo = {b: (bins[b], load[b]) for b in freed}
        slots = len(bins)
        pool = _Pool([i for b in freed for i in bins[b]], size)
        for b in freed:
            bins[b], load[b] = [], 0
        picks = self.rng.integers(0, len(self.nonfull), size=self.SCAN).tolist() if self.nonfull else []
        scan = sorted({self.nonfull[k] for k in picks}.difference(freed))
        spent = self._refill(scan, pool, undo)
        repacked = self._repack(pool.items(), freed, slots)
        touched = [*undo, *range(slots, len(bins))]
        before = sum(ld * ld for _, ld in undo.values())
        after = sum(load[b] * load[b] for b in touched)
        saved = len(freed) - repacked
        if saved > 0 or (saved == 0 and after >= before):
            for b in touched:
                self._track(b)
            return saved, spent + 1
        for b, (items, ld) in undo.items():
            bins[b], load[b] = items, ld
        del bins[slots:], load[slots:]
        for b in popped:
            heapq.heappush(self.heap, (load[b], b))
        return 0, spent + 1

    def _take_apart(self) -> tuple[list[int], list[int]]:
        """The bins this round frees: the LEAST least-filled (popped from the heap) and RANDOM random
        ones; returns (all freed, those popped)."""
        bins, load = self.bins, self.load
        freed: list[int] = []
        while len(freed) < self.LEAST and self.heap:
            ld, b = heapq.heappop(self.heap)
            if bins[b] and load[b] == ld and b not in freed:
                freed.append(b)
        popped = list(freed)
        for b in self.rng.integers(0, len(bins), size=self.RANDOM).tolist():
            if bins[b] and b not in freed:
                freed.append(b)
        return freed, popped

    def _refill(self, scan: list[int], pool: _Pool, undo: dict[int, tuple[list[int], int]]) -> int:
        """Exchange pool items into the `scan` bins while any bin gets fuller (each bin's old state
        saved in `undo` before its first change); returns the evaluations spent."""
        bins, load, size = self.bins, self.load, self.size
        spent, changed = 0, True
        while changed and pool:
            changed = False
            for b in scan:
                free = self.capacity - load[b]
                while free and pool:
                    spent += 1
                    gain, out, into = _best_exchange(bins[b], free, size, pool)
                    if not gain:
                        break
                    if b not in undo:
                        undo[b] = (list(bins[b]), load[b])
                    for i in out:
                        bins[b].remove(i)
                    pool.add(out)
                    bins[b].extend(pool.take(into))
                    pool.reindex()
                    load[b] += gain
                    free -= gain
                    changed = True
        return spent

    def _repack(self, left: list[int], freed: list[int], slots: int) -> int:
        """BFD over the items `left` in the pool, into the freed slots first, then new slots from
        `slots` on; returns the number of bins it used."""
        bins, load, size = self.bins, self.load, self.size
        repacked = best_fit_decreasing(np.array([size[i] for i in left]), self.capacity) if left else []
        targets = freed + list(range(slots, slots + max(0, len(repacked) - len(freed))))
        for slot, rb in zip(targets, repacked):
            if slot == len(bins):
                bins.append([])
                load.append(0)
            bins[slot] = [left[j] for j in rb]
            load[slot] = sum(size[i] for i in bins[slot])
        return len(repacked)

    def _track(self, b: int) -> None:
        """Refresh bin b in the least-filled heap and the list of bins with free space."""
        if self.bins[b]:
            heapq.heappush(self.heap, (self.load[b], b))
        has_room = bool(self.bins[b]) and self.load[b] < self.capacity
        if has_room and b not in self.where:
            self.where[b] = len(self.nonfull)
            self.nonfull.append(b)
        elif not has_room and b in self.where:
            k = self.where.pop(b)
            last = self.nonfull.pop()
            if last != b:
                self.nonfull[k] = last
                self.where[last] = k
