"""pack_bins and l2_lower_bound: packed-row invariants, never worse than BFD, exact small cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sftpack.packing.bins import best_fit_decreasing, l2_lower_bound, pack_bins


def assert_valid(bins: list[list[int]], lengths: np.ndarray, capacity: int) -> None:
    """Every item exactly once, every bin non-empty and within capacity."""
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(b and int(lengths[b].sum()) <= capacity for b in bins)


def real_like(rng: np.random.Generator, n: int, capacity: int) -> np.ndarray:
    """Chat-SFT-like lengths: a log-normal body (median ~115) from 48 up, capped at capacity."""
    return np.clip(rng.lognormal(np.log(115), 0.8, n).astype(np.int64), 48, capacity)


def optimum(lengths: list[int], capacity: int) -> int:
    """Fewest bins, by trying every assignment of items to bins (tiny inputs only)."""
    best = len(lengths)

    def place(k: int, loads: list[int]) -> None:
        nonlocal best
        if len(loads) >= best:
            return
        if k == len(lengths):
            best = len(loads)
            return
        for b in range(len(loads)):
            if loads[b] + lengths[k] <= capacity:
                loads[b] += lengths[k]
                place(k + 1, loads)
                loads[b] -= lengths[k]
        place(k + 1, loads + [lengths[k]])

    place(0, [])
    return best


def l2_by_definition(lengths: list[int], capacity: int) -> int:
    """Martello-Toth L2 written straight from its definition, one K at a time."""
    best = 0
    for k in range(capacity // 2 + 1):
        j1 = [w for w in lengths if w > capacity - k]
        j2 = [w for w in lengths if capacity / 2 < w <= capacity - k]
        j3 = [w for w in lengths if k <= w <= capacity / 2]
        spill = sum(j3) - (len(j2) * capacity - sum(j2))
        best = max(best, len(j1) + len(j2) + max(0, math.ceil(spill / capacity)))
    return best


@pytest.mark.parametrize("capacity", [512, 1024, 2048])
@pytest.mark.parametrize("kind", ["uniform", "real_like"])
def test_valid_deterministic_and_never_worse_than_bfd(capacity, kind):
    rng = np.random.default_rng(capacity)
    for _ in range(3):
        n = int(rng.integers(200, 3000))
        lengths = rng.integers(1, capacity + 1, n) if kind == "uniform" else real_like(rng, n, capacity)
        bins = pack_bins(lengths, capacity, effort=3000)  # a small budget keeps the test fast
        assert_valid(bins, lengths, capacity)
        assert len(bins) <= len(best_fit_decreasing(lengths, capacity))
        assert len(bins) >= l2_lower_bound(lengths, capacity)
        assert bins == pack_bins(lengths.copy(), capacity, effort=3000)


def test_real_like_mix_closes_most_of_bfd_gap():
    # Like the real data at 512: a fifth of the items over half a row, the rest short.
    rng = np.random.default_rng(7)
    lengths = real_like(rng, 3000, 512)
    bfd, floor = len(best_fit_decreasing(lengths, 512)), l2_lower_bound(lengths, 512)
    assert bfd > floor  # the case is only interesting if BFD leaves a gap
    rows = len(pack_bins(lengths, 512))
    assert rows - floor <= (bfd - floor) // 2


def test_reaches_optimum_where_bfd_does_not():
    # capacity 10, 30 tokens:  BFD -> [5 5] [4 4 .. ] [3 3 3 .] [3 . . .]  = 4 rows
    #                      optimum -> [5 5] [4 3 3]    [4 3 3]             = 3 rows
    lengths = np.array([5, 5, 4, 4, 3, 3, 3, 3])
    assert len(best_fit_decreasing(lengths, 10)) == 4
    bins = pack_bins(lengths, 10)
    assert_valid(bins, lengths, 10)
    assert len(bins) == 3 == optimum(lengths.tolist(), 10) == l2_lower_bound(lengths, 10)


def test_effort_zero_is_plain_bfd():
    lengths = np.array([5, 5, 4, 4, 3, 3, 3, 3])
    assert pack_bins(lengths, 10, effort=0) == best_fit_decreasing(lengths, 10)


def test_rejects_items_outside_capacity():
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        pack_bins(np.array([3, 11]), 10)
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        l2_lower_bound(np.array([0, 3]), 10)


def test_empty_input():
    assert pack_bins(np.array([], dtype=np.int64), 10) == []
    assert l2_lower_bound(np.array([], dtype=np.int64), 10) == 0


def test_l2_matches_definition_and_bounds_brute_force_optimum():
    rng = np.random.default_rng(0)
    for _ in range(150):
        capacity = int(rng.integers(5, 21))
        lengths = rng.integers(1, capacity + 1, int(rng.integers(1, 9))).tolist()
        bound = l2_lower_bound(np.array(lengths), capacity)
        best = optimum(lengths, capacity)
        assert bound == l2_by_definition(lengths, capacity), (lengths, capacity)
        assert math.ceil(sum(lengths) / capacity) <= bound <= best, (lengths, capacity)
        assert len(pack_bins(np.array(lengths), capacity)) >= best


def test_l2_beats_ceil_bound_on_large_items():
    # Three items over half a row can share no row: ceil(18/10) = 2 but L2 = 3 = optimum.
    assert l2_lower_bound(np.array([6, 6, 6]), 10) == 3 == optimum([6, 6, 6], 10)


def test_bins_list_longest_item_first():
    lengths = np.array([5, 5, 4, 4, 3, 3, 3, 3])
    for b in pack_bins(lengths, 10):
        assert [int(lengths[i]) for i in b] == sorted((int(lengths[i]) for i in b), reverse=True)


def test_small_instances_reach_optimum_when_bound_is_tight():
    # Exhaustive over small multisets: whenever L2 equals the optimum, pack_bins finds it.
    for lengths in itertools.combinations_with_replacement([2, 3, 4, 5, 6, 7], 6):
        best = optimum(list(lengths), 10)
        if l2_lower_bound(np.array(lengths), 10) == best:
            assert len(pack_bins(np.array(lengths), 10)) == best, lengths


# ---------------------------------------------------------------- many items: per-length counts

@pytest.mark.parametrize("capacity", [16, 64, 1024])
@pytest.mark.parametrize("kind", ["uniform", "real_like", "few_lengths"])
def test_bfd_on_counts_gives_bfds_rows(capacity, kind):
    from sftpack.packing.counts import best_fit_decreasing_counts

    rng = np.random.default_rng(capacity)
    for n in (0, 1, 7, 300, 2000):
        if kind == "uniform":
            lengths = rng.integers(1, capacity + 1, size=n)
        elif kind == "real_like":
            lengths = np.clip(rng.lognormal(np.log(capacity / 9), 0.8, n).astype(np.int64), 1, capacity)
        else:
            lengths = rng.choice([1, capacity // 3, capacity // 2, capacity], size=n)
        assert best_fit_decreasing_counts(lengths.astype(np.int16), capacity).tolist() == \
            best_fit_decreasing(lengths, capacity)


def test_many_items_pack_by_counts_within_a_tenth_of_a_percent_of_l2(monkeypatch):
    import sftpack.packing.bins as packing
    from sftpack.packing.counts import PackedRows

    rng = np.random.default_rng(7)
    lengths = real_like(rng, 200_000, 1024).astype(np.int16)
    monkeypatch.setattr(packing, "LARGE_INPUT", 100_000)
    rows = pack_bins(lengths, 1024)
    assert isinstance(rows, PackedRows)
    flat = np.asarray(rows.items)
    assert np.array_equal(np.sort(flat), np.arange(lengths.size))  # every item exactly once
    loads = np.add.reduceat(lengths[flat].astype(np.int64), rows.offsets[:-1])
    assert loads.max() <= 1024 and np.all(np.diff(rows.offsets) > 0)
    for row in rows[:50]:  # longest first, ties by index, as pack_bins' rows
        assert row.tolist() == sorted(row.tolist(), key=lambda i: (-lengths[i], i))
    bound = l2_lower_bound(lengths, 1024)
    assert len(rows) <= 1.001 * bound
    assert len(rows) <= len(best_fit_decreasing(lengths, 1024))
