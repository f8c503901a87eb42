"""Mix's MinHash signatures on a Ray cluster (`sftpack mix --ray ADDRESS`).

    .spill/<i>.jsonl (under --out-dir: shared storage) ──ray.data.read_text, in order──> lines
        ──map_batches on the nodes: words, shingles, rensa RMinHash (seeded)──> pickled signatures
        ──iter_rows, in line order──> the driver's greedy LSH clustering, verified on exact
        shingle sets the driver makes from the same lines (pipeline/mixing/dedup.py)

A signature depends only on the line's text, the recipe's ngram/num_perm/on and the fixed seed, so
the nodes compute exactly the signatures the local run does, and the output files are the same bytes.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterator

from sftpack.mixing.recipe import NearDedup

BLOCK_LINES = 2000  # lines per map task


class _Signer:
    """The map function: one batch of spill lines -> their pickled signatures."""

    def __init__(self, cfg: NearDedup):
        self.cfg = cfg

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import msgspec

        from sftpack.mixing.dedup import NearDuplicates
        from sftpack.mixing.text import turn_text, words

        records = [msgspec.json.decode(line) for line in batch["text"]]
        signatures = NearDuplicates(self.cfg).signatures(records, [words(turn_text(r)) for r in records])
        return {"signature": [pickle.dumps(s) for s in signatures]}


def spill_signatures(spill: Path, cfg: NearDedup, lines: int) -> Iterator[Any]:
    """Every line's signature, computed in Ray Data map tasks, yielded in line order.

    Args:
        spill: a mix spill file (one JSON record a line) every node can read at this path.
        cfg: the recipe's near-dedup settings.
        lines: the file's line count (sets how many map tasks share it).

    Raises:
        SftpackError: the cluster failed (a worker's error, with its message).
    """
    import ray.data

    from sftpack.distributed.cluster import run_dataset

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # signatures come back in line order
    dataset = ray.data.read_text(str(spill)).repartition(max(1, -(-lines // BLOCK_LINES)))
    dataset = dataset.map_batches(_Signer(cfg), batch_format="numpy", batch_size=BLOCK_LINES)
    for row in run_dataset(dataset.iter_rows()):
        yield pickle.loads(row["signature"])
