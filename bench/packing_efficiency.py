"""Packing efficiency: sftpack pack against TRL's bfd on the same sequences, and against the
lower bound ceil(tokens / max_length) rows.

    .venv/bin/python bench/packing_efficiency.py SMALL.jsonl --lengths-from BIG.jsonl \
        --tokenizer models/smollm2-135m-instruct --max-lengths 512 1024 2048 --out-dir bench/work/eff

For each max length: `sftpack.packing.stage.run` packs SMALL.jsonl for real (manifest totals); TRL's
`pack_dataset(strategy="bfd")`, exactly as SFTTrainer calls it (Dataset.map, batched, default
batch of 1000 examples), packs sequences of the very lengths pack kept. Then the same two
algorithms on the lengths of BIG.jsonl (encoded once, at the largest max length; sequences
longer than each max length left out): pack's `pack_bins` (what `sftpack pack` uses) against TRL's bfd.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa


def trl_rows(lengths: np.ndarray, max_length: int) -> int:
    import datasets
    from trl.data_utils import pack_dataset

    offsets = np.zeros(lengths.size + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.zeros(int(offsets[-1]), dtype=np.int32)))
    ds = datasets.Dataset(pa.table({"input_ids": ids}))
    packed = pack_dataset(ds, max_length, "bfd", {})
    lengths_out = packed.with_format("arrow")["seq_lengths"]
    assert sum(len(x) for x in lengths_out.to_pylist()) == lengths.size  # every sequence placed once
    return len(packed)


def kept_lengths(folder: Path) -> np.ndarray:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    stats = pq.read_table(folder / "stats.parquet", columns=["tokens", "dropped"])
    kept = pc.is_null(stats.column("dropped"))
    return np.asarray(stats.column("tokens").filter(kept).to_numpy(), dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--lengths-from", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--max-lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()

    import datasets

    from sftpack.packing.stage import PackConfig, run
    from sftpack.packing.bins import l2_lower_bound, lower_bound_rows, pack_bins

    datasets.disable_caching()
    datasets.disable_progress_bars()
    out = Path(args.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    result = {"small": [], "big": []}
    for max_length in args.max_lengths:
        manifest = run([args.input], out, PackConfig(tokenizer=args.tokenizer, max_length=max_length))
        t = manifest["totals"]
        lengths = kept_lengths(Path(manifest["path"]))
        assert int(lengths.sum()) == t["tokens"]
        trl = trl_rows(lengths, max_length)
        result["small"].append({"max_length": max_length, "examples": int(lengths.size), "tokens": t["tokens"],
                                "bound": t["lower_bound_rows"], "l2": l2_lower_bound(lengths, max_length),
                                "pack_rows": t["rows"], "trl_rows": trl})
    big = run([args.lengths_from], out, PackConfig(tokenizer=args.tokenizer, max_length=max(args.max_lengths),
                                                   truncation="drop"))
    all_lengths = kept_lengths(Path(big["path"]))
    for max_length in args.max_lengths:
        lengths = all_lengths[all_lengths <= max_length]
        tokens = int(lengths.sum())
        result["big"].append({"max_length": max_length, "examples": int(lengths.size), "tokens": tokens,
                              "bound": lower_bound_rows(tokens, max_length),
                              "l2": l2_lower_bound(lengths, max_length),
                              "pack_rows": len(pack_bins(lengths, max_length)),
                              "trl_rows": trl_rows(lengths, max_length)})
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
