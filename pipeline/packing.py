"""Bin packing of example lengths into rows of at most `capacity` tokens.

Pure functions over lengths only: the token data itself never enters memory here.

    row 0: [ ex 17 (900)          | ex 3 (100) ]   seq_lengths = [900, 100]
    row 1: [ ex 5 (600)   | ex 9 (300) | ex 2 (90) ]  seq_lengths = [600, 300, 90]

Sequences are never split across rows; each row's lengths sum to at most `capacity`.
"""

from __future__ import annotations

import math

import numpy as np


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


def one_per_row(lengths: np.ndarray) -> list[list[int]]:
    """No packing: every item in its own row, in input order."""
    return [[i] for i in range(len(lengths))]


def lower_bound_rows(total_tokens: int, capacity: int) -> int:
    """No packing can use fewer rows than ceil(tokens / capacity)."""
    return math.ceil(total_tokens / capacity) if total_tokens else 0
