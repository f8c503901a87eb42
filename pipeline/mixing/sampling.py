"""How many examples each source gives, and which: seeded, without replacement first, then whole repeats.

    take N      -> N
    epochs E    -> round(E x available)
    weight W    -> a share W / sum(W) of what `total` leaves after take and epochs sources; without
                   `total`, the largest weighted part that needs no repeats (min available / share)
    none        -> every example once

Shares become whole numbers by largest remainder (ties to the earlier source). A source giving N
of its M available examples gives each one N // M times, plus a seeded sample of N mod M of them
once more; with `repeat: false`, take and weight are capped at M. Every source draws from its own
generator (seed, purpose, source name), so adding a source or changing another's share changes no
other source's sample.
"""

from __future__ import annotations

import math
import random

from sftpack.errors import SftpackError
from sftpack.mixing.recipe import Recipe


def rng(seed: int, purpose: str, name: str) -> random.Random:
    """The generator for one purpose (eval, sample) of one source: a str seed hashes the same everywhere."""
    return random.Random(f"{seed}/{purpose}/{name}")


def eval_positions(recipe: Recipe, name: str, valid: int, size: int) -> set[int]:
    """Positions (0-based among the source's valid records) held out for eval, seeded."""
    return set(rng(recipe.seed, "eval", name).sample(range(valid), size))


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` split in whole numbers as near `weights`' shares as can be: each its floor, then one
    more to the largest remainders (ties to the earlier name)."""
    norm = sum(weights.values())
    exact = {name: total * w / norm for name, w in weights.items()}
    counts = {name: math.floor(x) for name, x in exact.items()}
    order = sorted(weights, key=lambda name: (-(exact[name] - counts[name]), list(weights).index(name)))
    for name in order[:total - sum(counts.values())]:
        counts[name] += 1
    return counts


def target_counts(recipe: Recipe, available: dict[str, int]) -> dict[str, int]:
    """Examples each source gives to the mixture.

    Args:
        recipe: the recipe (shares per source, total).
        available: source name -> records left after hold-out and removals.

    Returns:
        Source name -> examples (repeats included).

    Raises:
        SftpackError: `total` smaller than what take and epochs sources already give, or weighted
            sources with nothing left.
    """
    counts, weights = {}, {}
    for source in recipe.sources:
        if source.take is not None:
            counts[source.name] = source.take
        elif source.epochs is not None:
            counts[source.name] = math.floor(source.epochs * available[source.name] + 0.5)
        elif source.weight is not None:
            weights[source.name] = source.weight
        else:
            counts[source.name] = available[source.name]
    if weights:
        if recipe.total is not None:
            left = recipe.total - sum(counts.values())
            if left < 0:
                raise SftpackError(f"{recipe.origin}: total {recipe.total} is below the {sum(counts.values())} "
                                   "examples that take and epochs sources give; raise total or lower those", exit_code=2)
        else:
            norm = sum(weights.values())
            left = math.floor(min(available[name] * norm / w for name, w in weights.items()))
        empty = [name for name in weights if available[name] == 0]
        if empty and left:
            raise SftpackError(f"{recipe.origin}: weighted source(s) {', '.join(empty)} have no example left after "
                               "hold-out and removals; remove their weight or the source", exit_code=2)
        counts |= largest_remainder(left, weights)
    for source in recipe.sources:
        if not source.repeat:
            counts[source.name] = min(counts[source.name], available[source.name])
    return {source.name: counts[source.name] for source in recipe.sources}


def copies(recipe: Recipe, name: str, wanted: int, available: int) -> tuple[int, set[int]]:
    """(times every example is given, positions given once more): `wanted` examples of `available`.

    Below `available`, a seeded sample without replacement (times = 0); above it, whole repeats plus
    a seeded sample of the remainder.
    """
    if available == 0:
        return 0, set()
    whole, extra = divmod(wanted, available)
    return whole, set(rng(recipe.seed, "sample", name).sample(range(available), extra))
