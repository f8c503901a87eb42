"""Mix's per-record work on a Ray cluster (`sftpack mix --ray ADDRESS`; the executor is a RayExecutor): decontamination lookups (eval
near copies, benchmark n-grams),
MinHash signatures and band keys in Ray Data map tasks, grouping on band keys, and deduplication
per component of the candidate graph, on the nodes. The driver screens and writes in order.

    .spill/<i>.jsonl (under --out-dir: shared storage) ──line offsets (driver)──> blocks of lines
    block ──map task: the contamination lookups' match, class, band keys──> keyed (materialized)
    keyed ──one row per band key of a class──co-located by key──> buckets (sorted class reps)
          ──driver: union-find──> components of the LSH's candidate graph
    keyed ──in line order──> driver: each line's match and class rep; screening (filters, rules,
          decontamination) in order ──> the lines that reach deduplication, by component
    component of two or more ──map task: reads its lines, mixing.dedup.deduplicate──> removals ──> driver

Everything a task returns depends only on the lines, the recipe and the fixed MinHash seed, and the
driver applies it in the local run's order (pipeline/mixing/near_graph.py says why the decisions are
the same), so the output files are the same bytes as the local run's. The driver holds each line's
offset, component and token count, its class key per distinct text, and every removal's details.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sftpack.mixing.decontaminate import Contamination
from sftpack.mixing.recipe import DedupConfig

BLOCK_LINES = 2000  # lines per map task
_SCAN_BYTES = 16 << 20
_SHARED: dict[str, Any] = {}  # per worker process: each object the tasks share arrives once


def _shared(ref: list) -> Any:
    """The object behind `[ray.put(obj)]` (in a list, so Ray passes the reference, not the object),
    fetched once per worker process."""
    import ray

    key = ref[0].hex()
    if key not in _SHARED:
        if len(_SHARED) >= 4:  # a long-lived worker serves many runs: keep the latest run's objects
            _SHARED.clear()
        _SHARED[key] = ray.get(ref[0])
    return _SHARED[key]


def line_starts(path: Path) -> np.ndarray:
    """Byte offset of every line of a file, read in bounded chunks."""
    starts, offset = [np.zeros(1, dtype=np.int64)], 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_SCAN_BYTES):
            starts.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10).astype(np.int64) + offset + 1)
            offset += len(chunk)
    found = np.concatenate(starts)
    return found[found < offset]  # no line starts at the end of the file


class Spills:
    """The spill files as one sequence of lines in priority order (source, then row): line ordinal ->
    (file, byte range). Small enough to send to every task (8 bytes a line)."""

    def __init__(self, paths: list[Path]):
        self.paths = [str(p.resolve()) for p in paths]
        self.sizes = [p.stat().st_size for p in paths]
        self.starts = [line_starts(p) for p in paths]
        self.firsts = np.cumsum([0] + [len(s) for s in self.starts])

    def blocks(self) -> list[dict[str, Any]]:
        return [{"first": int(self.firsts[f] + i), "count": int(min(BLOCK_LINES, len(s) - i))}
                for f, s in enumerate(self.starts) for i in range(0, len(s), BLOCK_LINES)]

    def lines(self, ordinals: list[int]) -> list[bytes]:
        """The lines of ascending `ordinals`, each file opened once."""
        from sftpack.execution.cluster import check_input

        found: list[bytes] = []
        files = np.searchsorted(self.firsts, ordinals, side="right") - 1
        for f in np.unique(files).tolist():
            check_input(self.paths[f], self.sizes[f])
            with open(self.paths[f], "rb") as handle:
                for ordinal in np.asarray(ordinals)[files == f].tolist():
                    handle.seek(int(self.starts[f][ordinal - self.firsts[f]]))
                    found.append(handle.readline().rstrip(b"\n"))
        return found

    def read(self, first: int, count: int) -> list[bytes]:
        """`count` lines from ordinal `first` (all in one file)."""
        from sftpack.execution.cluster import check_input

        f = int(np.searchsorted(self.firsts, first, side="right") - 1)
        check_input(self.paths[f], self.sizes[f])
        start = int(self.starts[f][first - self.firsts[f]])
        last = first - self.firsts[f] + count
        end = int(self.starts[f][last]) if last < len(self.starts[f]) else self.sizes[f]
        with open(self.paths[f], "rb") as handle:
            handle.seek(start)
            return handle.read(end - start).rstrip(b"\n").split(b"\n")  # JSON lines hold no raw newline


class _Keyer:
    """Map task over blocks: each line's contamination match, class and band keys."""

    def __init__(self, spills: list, lookups: list, dedup: DedupConfig):
        self.spills, self.lookups, self.dedup = spills, lookups, dedup  # [ObjectRef]s: see _shared

    def __call__(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        import msgspec

        from sftpack.checks.conversation_key import conversation_hash
        from sftpack.mixing.near_graph import line_keys
        from sftpack.mixing.text import conversation_words

        records = [msgspec.json.decode(raw) for raw in _shared(self.spills).read(block["first"], block["count"])]
        lookups: Contamination = _shared(self.lookups)
        dialogues, all_words = zip(*map(conversation_words, records)) if records else ((), ())  # each turn split once
        all_words = list(all_words)
        matches = lookups.matches(list(dialogues))
        near = self.dedup.near
        classes, keys = line_keys(records, near, all_words) if near is not None else \
            ([b""] * len(records), [[]] * len(records))
        # exact duplicates may differ in text (tool-call keys in another order): their own key joins them
        exact = [b"x" + conversation_hash(r).to_bytes(8, "little", signed=True) if self.dedup.exact and near else b""
                 for r in records]
        return [{"ordinal": block["first"] + i, "match": json.dumps(m, ensure_ascii=False) if m else "",
                 "klass": classes[i], "bands": keys[i], "exact": exact[i]} for i, m in enumerate(matches)]


def _band_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per band key of each class's first line in the batch (a class's lines share every
    band key, and its first line of all is the first in some batch), and one per line's exact key."""
    first: dict[bytes, int] = {}
    for i, (ordinal, klass) in enumerate(zip(batch["ordinal"].tolist(), batch["klass"].tolist())):
        if klass not in first or ordinal < batch["ordinal"][first[klass]]:
            first[klass] = i
    keep = sorted(first.values())
    counts = [len(batch["bands"][i]) for i in keep]
    exact = np.flatnonzero([len(key) > 0 for key in batch["exact"]])
    band = np.empty(sum(counts) + len(exact), dtype=object)
    band[:] = [key for i in keep for key in batch["bands"][i]] + [batch["exact"][i] for i in exact]
    return {"band": band, "ordinal": np.concatenate([np.repeat(batch["ordinal"][keep], counts), batch["ordinal"][exact]]),
            "klass": np.concatenate([np.repeat(batch["klass"][keep], counts), batch["klass"][exact]])}


def _bucket(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The buckets of a block's band keys (each key's rows all in this block) that hold two classes
    or more, as sorted reps, each once (near copies share most band keys, so most buckets repeat)."""
    from sftpack.mixing.near_graph import bucket_members

    _, inverse, counts = np.unique(block["band"], return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts[inverse] > 1)
    shared = shared[np.argsort(inverse[shared], kind="stable")]
    buckets: dict[tuple[int, ...], None] = {}
    for rows in np.split(shared, np.flatnonzero(np.diff(inverse[shared])) + 1) if len(shared) else ():
        members = tuple(bucket_members(block["ordinal"][rows], block["klass"][rows]))
        if len(members) > 1:
            buckets[members] = None
    column = np.empty(len(buckets), dtype=object)
    column[:] = [np.array(m, dtype=np.int64) for m in buckets]
    return {"members": column}


class _Deduplicator:
    """Map task over components: reads a component's lines, deduplicates them with the local code."""

    def __init__(self, spills: list, dedup: DedupConfig):
        self.spills, self.dedup = spills, dedup  # [ObjectRef]: see _shared

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        import msgspec

        from sftpack.mixing.dedup import deduplicate

        spills: Spills = _shared(self.spills)
        ordinals = [int(o) for o in item["ordinals"]]
        lines = [msgspec.json.decode(raw) for raw in spills.lines(ordinals)]
        return [{"ordinal": o, "reason": removal[0], "details": json.dumps(removal[1], ensure_ascii=False)}
                for o, removal in zip(ordinals, deduplicate(lines, self.dedup)) if removal is not None]


def _materialized(dataset: Any) -> Iterator[Any]:
    yield dataset.materialize()  # as a generator, so run_dataset turns a task's error into an SftpackError


class ClusterLines:
    """The cluster's side of a mix: `rows()`, each line's (contamination match, class rep) in priority
    order, and `deduplicate`, per component of the LSH's candidate graph."""

    def __init__(self, spill_paths: list[Path], lookups: Contamination, dedup: DedupConfig):
        """Runs the map tasks and groups the band keys into components.

        Raises:
            SftpackError: the cluster failed (a worker's error, with its message).
        """
        import ray
        import ray.data

        from sftpack.execution.cluster import cluster_cpus, run_dataset
        from sftpack.execution.on_ray import group_on_ray
        from sftpack.mixing.near_graph import Components

        spills = Spills(spill_paths)
        blocks, self.spills = spills.blocks(), [ray.put(spills)]
        options = ray.data.DataContext.get_current().execution_options
        ordered, options.preserve_order = options.preserve_order, True  # rows() in line order; a dataset keeps
        try:                                                             # the options it was made with
            keyed = ray.data.from_items(blocks, override_num_blocks=max(1, len(blocks))).flat_map(
                _Keyer(self.spills, [ray.put(lookups)], dedup))
        finally:
            options.preserve_order = ordered
        self.keyed = next(run_dataset(_materialized(keyed)))
        self.components = Components(int(spills.firsts[-1]))
        self.partitions = 4 * cluster_cpus()
        if dedup.near is None:
            return
        bands = self.keyed.map_batches(_band_rows, batch_format="numpy")
        for bucket in group_on_ray(bands, "band", self.partitions, _bucket):
            self.components.union(np.asarray(bucket["members"], dtype=np.int64))

    def rows(self) -> Iterator[tuple[dict[str, Any] | None, int]]:
        """(match or None, class rep) of every line, in priority order; the rep is the class's first line."""
        from sftpack.execution.cluster import run_dataset

        reps: dict[bytes, int] = {}
        for row in run_dataset(self.keyed.select_columns(["ordinal", "match", "klass"]).iter_rows()):
            rep = reps.setdefault(row["klass"], int(row["ordinal"]))
            yield (json.loads(row["match"]) if row["match"] else None), rep

    def deduplicate(self, ordinals: np.ndarray, reps: np.ndarray, dedup: DedupConfig) -> dict[int, tuple[str, dict]]:
        """The removals among the lines that reach deduplication (`ordinals`, ascending, of class
        `reps`), decided per component on the nodes.

        Raises:
            SftpackError: the cluster failed (a worker's error, with its message).
        """
        import ray.data

        from sftpack.execution.cluster import run_dataset

        groups = self.components.groups(ordinals, reps)
        if not groups:
            return {}
        items = ray.data.from_items([{"ordinals": g} for g in groups], override_num_blocks=min(len(groups), self.partitions))
        rows = run_dataset(items.flat_map(_Deduplicator(self.spills, dedup)).iter_rows())
        return {int(r["ordinal"]): (r["reason"], json.loads(r["details"])) for r in rows}
