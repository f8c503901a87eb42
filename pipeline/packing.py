"""Bin packing of example lengths into rows of at most `capacity` tokens.

Pure functions over lengths only: the token data itself never enters memory here.

    row 0: [ ex 17 (900)          | ex 3 (100) ]   seq_lengths = [900, 100]
    row 1: [ ex 5 (600)   | ex 9 (300) | ex 2 (90) ]  seq_lengths = [600, 300, 90]

Sequences are never split across rows; each row's lengths sum to at most `capacity`.

`pack_bins` is what the pack stage uses: best-fit-decreasing, then a short local search that
empties rows while it can, stopping at the Martello-Toth bound `l2_lower_bound` (no packing can
do better) or when its work budget is spent. It never returns more rows than BFD.
"""

from __future__ import annotations

import bisect
import heapq
import math

import numpy as np

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


class PackedRows:
    """Rows as flat item indices and row offsets (CSR): row r is items[offsets[r]:offsets[r+1]].

    Reads like `list[list[int]]` where pack needs it (len, iteration, indexing and slicing give
    rows as int arrays), at 4 bytes an item instead of ~36.
    """

    def __init__(self, items: np.ndarray, offsets: np.ndarray):
        self.items, self.offsets = items, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[r] for r in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        return self.items[self.offsets[index]:self.offsets[index + 1]]

    def __iter__(self):
        for r in range(len(self)):
            yield self[r]

    def tolist(self) -> list[list[int]]:
        return [row.tolist() for row in self]


def best_fit_decreasing_counts(lengths: np.ndarray, capacity: int) -> PackedRows:
    """`best_fit_decreasing`, the same rows, computed from per-length counts.

    Items of one length are placed as a group: best fit sends the next item of length s to the
    open bin with the least remaining space r >= s, and once that bin holds r // s of them its
    space r % s is below s, so the next one goes to the next bin of the same bucket (the buckets
    are stacks, as in `best_fit_decreasing`) or to a new bin, which likewise takes capacity // s.
    So each step moves a run of bins from one bucket to another, giving each the same number of
    items: at most capacity steps per distinct length, whatever the number of items. Run twice:
    once to count each bin's items, once to place them.

    Args:
        lengths: item lengths, each in [1, capacity] (any integer dtype; int16/int32 keep memory low).
        capacity: the bin size.

    Returns:
        PackedRows, bins in the order they were opened, items longest first (ties by index).

    Raises:
        ValueError: an item longer than `capacity` or shorter than 1.
    """
    w = np.asarray(lengths)
    if w.size and (int(w.max()) > capacity or int(w.min()) < 1):
        raise ValueError(f"lengths must lie in [1, {capacity}]")
    order, count = _longest_first(w, capacity)
    return _place(order, lambda: _bfd_runs(count, capacity))


def _place(order: np.ndarray, runs) -> PackedRows:
    """PackedRows from runs (position in `order` of the run's first item, bin ids, items each):
    each bin's items in run order. `runs()` is called three times (bins, items per bin, placing),
    so no run is kept."""
    bins = 0
    for _, ids, _ in runs():
        bins = max(bins, int(ids.max()) + 1)
    per_bin = np.zeros(bins, dtype=np.int64)
    for _, ids, q in runs():
        per_bin[ids] += q
    offsets = np.zeros(bins + 1, dtype=np.int64)
    np.cumsum(per_bin, out=offsets[1:])
    del per_bin
    cursor = offsets[:-1].copy()
    items = np.empty(order.size, dtype=order.dtype)
    for first, ids, q in runs():
        slots = (cursor[ids][:, None] + np.arange(q)).ravel()
        items[slots] = order[first:first + ids.size * q]
        cursor[ids] += q
    return PackedRows(items, offsets)


def pack_counts(lengths: np.ndarray, capacity: int) -> PackedRows:
    """Pack many items from per-length counts: `best_fit_decreasing_counts`, or a pattern fill when
    that needs fewer rows (ties: BFD).

    The pattern fill (minimum bin slack, with multiplicities): take one of the longest items left,
    fill the rest of its row with the fullest multiset of the items left (a bounded subset sum over
    lengths, Python ints as bitsets, stopping at an exact fit), and repeat that row as often as the
    counts allow. Work depends on the number of distinct lengths and patterns, not items (about a
    thousand patterns for chat-like lengths at max_length 1024, ~0.2 s). On chat-like lengths it
    ends within 0.1% of the L2 bound where BFD, unable to close gaps below the shortest item,
    stays ~0.5% above it.

    Args:
        lengths: item lengths, each in [1, capacity] (int16/int32 keep memory at 2-4 bytes an item).
        capacity: the bin size.

    Returns:
        PackedRows: rows longest item first, ties by index; BFD's rows in BFD's order, or the
        pattern fill's rows pattern by pattern.

    Raises:
        ValueError: an item longer than `capacity` or shorter than 1.
    """
    w = np.asarray(lengths)
    if w.size and (int(w.max()) > capacity or int(w.min()) < 1):
        raise ValueError(f"lengths must lie in [1, {capacity}]")
    order, count = _longest_first(w, capacity)
    bfd_rows = 0
    for _, ids, _ in _bfd_runs(count, capacity):
        bfd_rows = max(bfd_rows, int(ids.max()) + 1)
    patterns = _pattern_fill(count, capacity)
    if sum(k for _, k in patterns) >= bfd_rows:
        return _place(order, lambda: _bfd_runs(count, capacity))
    starts = np.zeros(capacity + 1, dtype=np.int64)  # position in `order` of each length's first item
    starts[:-1] = np.cumsum(count[::-1])[::-1][1:]
    return _place(order, lambda: _pattern_runs(patterns, starts))


def _pattern_runs(patterns: list[tuple[dict[int, int], int]], starts: np.ndarray):
    taken = dict.fromkeys(range(len(starts)), 0)
    first_bin = 0
    for uses, k in patterns:
        ids = np.arange(first_bin, first_bin + k, dtype=np.int64)
        for length in sorted(uses, reverse=True):
            q = uses[length]
            yield int(starts[length]) + taken[length], ids, q
            taken[length] += k * q
        first_bin += k


def _pattern_fill(count: np.ndarray, capacity: int) -> list[tuple[dict[int, int], int]]:
    """Rows as (items per length, how many such rows), longest items first (see pack_counts)."""
    left = [int(c) for c in count]
    lengths = [length for length in range(capacity, 0, -1) if left[length]]
    patterns = []
    while True:
        while lengths and not left[lengths[0]]:
            lengths.pop(0)
        if not lengths:
            return patterns
        longest = lengths[0]
        left[longest] -= 1
        uses = _fullest_subset(capacity - longest, left, lengths)
        left[longest] += 1
        uses[longest] = uses.get(longest, 0) + 1
        k = min(left[length] // u for length, u in uses.items())
        for length, u in uses.items():
            left[length] -= k * u
        patterns.append((uses, k))


def _fullest_subset(room: int, left: list[int], lengths: list[int]) -> dict[int, int]:
    """Items per length of a multiset from `left` (lengths longest first) with the largest sum <= room."""
    steps, history = [], [1]
    reach, mask = 1, (1 << (room + 1)) - 1  # bit t set <=> sum t reachable
    for length in lengths:
        if length > room or not left[length]:
            continue
        for _ in range(min(left[length], room // length)):
            grown = (reach | (reach << length)) & mask
            if grown == reach:
                break
            reach = grown
            steps.append(length)
            history.append(reach)
        if reach >> room & 1:
            break  # an exact fit
    total = reach.bit_length() - 1
    uses: dict[int, int] = {}
    for i in range(len(steps) - 1, -1, -1):  # walk back: step i was used iff total was not reachable before it
        if total and not history[i] >> total & 1:
            uses[steps[i]] = uses.get(steps[i], 0) + 1
            total -= steps[i]
    return uses


def _length_counts(w: np.ndarray, capacity: int, chunk: int = 1 << 22) -> np.ndarray:
    """Items per length, 0..capacity (bincount chunk by chunk: it copies its input to int64)."""
    count = np.zeros(capacity + 1, dtype=np.int64)
    for start in range(0, w.size, chunk):
        count += np.bincount(w[start:start + chunk], minlength=capacity + 1)
    return count


def _longest_first(w: np.ndarray, capacity: int, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Item indices longest first, ties by index (a counting sort, chunk by chunk, so memory stays
    at 4 bytes an item plus one chunk's work), and the count of items per length."""
    count = _length_counts(w, capacity, chunk)
    cursor = np.zeros(capacity + 1, dtype=np.int64)  # where each length's items start, longest first
    cursor[:-1] = np.cumsum(count[::-1])[::-1][1:]
    order = np.empty(w.size, dtype=np.int32 if w.size < 2**31 else np.int64)
    for start in range(0, w.size, chunk):
        part = w[start:start + chunk].astype(np.int64)
        local = np.argsort(-part, kind="stable")
        keys = part[local]
        counts = np.bincount(part, minlength=capacity + 1)
        first = np.zeros(capacity + 2, dtype=np.int64)  # first position of each length in `local`
        first[1:] = np.cumsum(counts[::-1])
        group_start = first[capacity - keys]
        order[cursor[keys] + np.arange(keys.size) - group_start] = local + start
        cursor += counts
    return order, count


def _bfd_runs(count: np.ndarray, capacity: int):
    """Best-fit-decreasing over per-length counts: yield (position of the run's first item in
    longest-first order, bin ids, items each) for every run of bins that take the same number of
    items of one length, in placement order."""
    stacks: list[list[np.ndarray]] = [[] for _ in range(capacity + 1)]  # remaining space -> chunks of bin ids
    sizes = [0] * (capacity + 1)
    nonempty = 0  # bit r set <=> stacks[r] holds a bin
    opened = 0
    position = 0

    def push(r: int, ids: np.ndarray) -> None:
        nonlocal nonempty
        if r > 0 and ids.size:
            stacks[r].append(ids)
            sizes[r] += ids.size
            nonempty |= 1 << r

    def pop(r: int, t: int) -> np.ndarray:
        nonlocal nonempty
        taken, chunks = [], stacks[r]
        while t:
            chunk = chunks[-1]
            if chunk.size <= t:
                taken.append(chunk[::-1])
                chunks.pop()
                t -= chunk.size
            else:
                taken.append(chunk[:-t - 1:-1])
                chunks[-1] = chunk[:-t]
                t = 0
        ids = np.concatenate(taken) if len(taken) > 1 else taken[0]
        sizes[r] -= ids.size
        if not sizes[r]:
            nonempty &= ~(1 << r)
        return ids

    for s in range(capacity, 0, -1):
        c = int(count[s])
        while c:
            fits = nonempty >> s
            if fits:
                r = s + ((fits & -fits).bit_length() - 1)
                q = r // s
                t = min(sizes[r], -(-c // q))
                ids = pop(r, t)
            else:
                r, q = capacity, capacity // s
                t = -(-c // q)
                ids = np.arange(opened, opened + t, dtype=np.int64)
                opened += t
            whole = t if c >= t * q else t - 1  # the last bin may take fewer
            if whole:
                yield position, ids[:whole], q
                push(r - q * s, ids[:whole])
                position += whole * q
                c -= whole * q
            if whole < t:
                yield position, ids[whole:], c
                push(r - c * s, ids[whole:])
                position += c
                c = 0


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
    count = _length_counts(w, capacity)
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
        bins, load, size, capacity = self.bins, self.load, self.size, self.capacity
        freed: list[int] = []
        while len(freed) < self.LEAST and self.heap:
            ld, b = heapq.heappop(self.heap)
            if bins[b] and load[b] == ld and b not in freed:
                freed.append(b)
        popped = list(freed)
        for b in self.rng.integers(0, len(bins), size=self.RANDOM).tolist():
            if bins[b] and b not in freed:
                freed.append(b)
        undo = {b: (bins[b], load[b]) for b in freed}
        slots = len(bins)
        pool = _Pool([i for b in freed for i in bins[b]], size)
        for b in freed:
            bins[b], load[b] = [], 0
        picks = self.rng.integers(0, len(self.nonfull), size=self.SCAN).tolist() if self.nonfull else []
        scan = sorted({self.nonfull[k] for k in picks}.difference(freed))
        spent, changed = 0, True
        while changed and pool:
            changed = False
            for b in scan:
                free = capacity - load[b]
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
        left = pool.items()
        repacked = best_fit_decreasing(np.array([size[i] for i in left]), capacity) if left else []
        targets = freed + list(range(slots, slots + max(0, len(repacked) - len(freed))))
        for slot, rb in zip(targets, repacked):
            if slot == len(bins):
                bins.append([])
                load.append(0)
            bins[slot] = [left[j] for j in rb]
            load[slot] = sum(size[i] for i in bins[slot])
        touched = [*undo, *range(slots, len(bins))]
        before = sum(ld * ld for _, ld in undo.values())
        after = sum(load[b] * load[b] for b in touched)
        saved = len(freed) - len(repacked)
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
