"""pack_bins on 100M synthetic sequence lengths: seconds, peak memory, rows against the L2 bound.

    .venv/bin/python bench/scaling_packing.py --n 100000000 --max-length 1024 [--lengths-from x.jsonl.lengths.npy]

Lengths are drawn (seeded) from the real data's packed sequence lengths when `--lengths-from`
names a .npy of them, else from a chat-like log-normal (median ~115 tokens, 48..max_length).
Run on one core (taskset), in its own process so peak RSS is this measurement's alone. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sftpack.packing.bins import l2_lower_bound, lower_bound_rows, pack_bins  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000_000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--lengths-from", help=".npy of real sequence lengths to resample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.lengths_from:
        real = np.load(args.lengths_from)
        lengths = real[rng.integers(0, real.size, size=args.n)].astype(np.int16)
        source = f"resampled from {args.lengths_from} ({real.size} real sequence lengths)"
    else:
        lengths = np.empty(args.n, dtype=np.int16)
        for start in range(0, args.n, 1 << 24):  # in chunks: no 800 MB float64 temporary
            part = rng.lognormal(np.log(115), 0.8, min(1 << 24, args.n - start))
            lengths[start:start + part.size] = np.clip(part, 48, args.max_length).astype(np.int16)
        source = "log-normal, median 115, clipped to [48, max_length]"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    rows = pack_bins(lengths, args.max_length)
    pack_s = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    bound = l2_lower_bound(lengths, args.max_length)
    bound_s = time.perf_counter() - started
    tokens = int(lengths.sum(dtype=np.int64))
    print(json.dumps({
        "n": args.n, "max_length": args.max_length, "lengths": source, "tokens": tokens,
        "pack_bins_s": round(pack_s, 1), "peak_rss_mib": round(peak_mib), "rss_before_mib": round(before / 1024),
        "rows": len(rows), "l2_bound": bound, "ceil_bound": lower_bound_rows(tokens, args.max_length),
        "over_l2_pct": round(100 * (len(rows) - bound) / bound, 4), "l2_s": round(bound_s, 1),
        "efficiency": round(tokens / (len(rows) * args.max_length), 6),
    }))


if __name__ == "__main__":
    main()
