"""Lines per second of `sftpack validate`: the whole command, and the per-line checks alone.

Compares source trees (e.g. a `git archive` of the old commit and of the new one) on one input
made from tests/data/real/*.jsonl.gz repeated to about `--lines` lines (written once to
`--data`, outside the repository). Runs are alternated between trees so shared load hits both.

    .venv/bin/python bench/validate_speed.py --data /tmp/sbench/real100k.jsonl \\
        --tree before=/tmp/sbench/before --tree after=/tmp/sbench/after --runs 3

Whole command: `python -m sftpack validate DATA --out-dir TMP --allow-rejects` with the tree
as working directory and PYTHONPATH (so its `pipeline` is imported), wall and CPU seconds (CPU is
the steadier number on a shared machine). Per-line checks: in a child process, `classify_line`
(parse_line, schema_errors, ROW_CHECKS) over the file's lines held in memory, then
`conversation_hash` over the records (validate's duplicate check). `--same-output FILE` first
checks that every tree writes the same kept lines, rejects and manifest (but `seconds`) for FILE.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REAL = Path(__file__).resolve().parent.parent / "tests" / "data" / "real"

PER_LINE = r"""
import sys, time
from sftpack.checks.messages import classify_line
try:
    from sftpack.checks.conversation_key import conversation_hash
except ImportError:  # a tree from before pipeline/checks/conversation_key.py
    from sftpack.checks.messages import conversation_hash
lines = [line for line in open(sys.argv[1], "rb") if line.strip()]
start = time.process_time()
results = [classify_line(line) for line in lines]
checks = time.process_time() - start
start = time.process_time()
for record, errors in results:
    if not errors:
        conversation_hash(record)
hashing = time.process_time() - start
print(len(lines), checks, hashing, sum(1 for _, errors in results if errors))
"""


def make_data(path: Path, lines: int) -> None:
    sources = b"".join(gzip.decompress(p.read_bytes()) for p in sorted(REAL.glob("*.jsonl.gz")))
    per_copy = sources.count(b"\n")
    with open(path, "wb") as out:
        for _ in range(-(-lines // per_copy)):
            out.write(sources)


def _validate(tree: Path, data: Path, out_dir: str) -> None:
    subprocess.run([sys.executable, "-m", "sftpack", "validate", str(data), "--out-dir", out_dir, "--allow-rejects"],
                   cwd=tree, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(tree)})


def whole_command(tree: Path, data: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one `validate` run of `tree` on `data`."""
    with tempfile.TemporaryDirectory() as out_dir:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        _validate(tree, data, out_dir)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def outputs(tree: Path, data: Path) -> dict[str, object]:
    """What `validate` of `tree` writes for `data`: file name -> bytes (the manifest parsed, less `seconds`)."""
    with tempfile.TemporaryDirectory() as out_dir:
        _validate(tree, data, out_dir)
        files: dict[str, object] = {p.name: p.read_bytes() for p in sorted(Path(out_dir).iterdir())}
    for name, content in files.items():
        if name.endswith(".validate.json"):
            files[name] = {k: v for k, v in json.loads(content).items() if k != "seconds"}
    return files


def per_line(tree: Path, data: Path) -> tuple[int, float, float, int]:
    """(lines, classify_line CPU seconds, conversation_hash CPU seconds, rejected lines)."""
    out = subprocess.run([sys.executable, "-c", PER_LINE, str(data)], cwd=tree, check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(tree)}).stdout.split()
    return int(out[0]), float(out[1]), float(out[2]), int(out[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="input JSONL (made if missing)")
    parser.add_argument("--lines", type=int, default=100_000, help="about this many lines when making --data")
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree")
    parser.add_argument("--runs", type=int, default=3, help="whole-command runs per tree")
    parser.add_argument("--same-output", type=Path, help="a JSONL file every tree must validate identically")
    args = parser.parse_args()
    if not args.data.exists():
        make_data(args.data, args.lines)
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    if args.same_output:
        results = {name: outputs(tree, args.same_output) for name, tree in trees.items()}
        first = next(iter(results.values()))
        differ = [name for name, result in results.items() if result != first]
        print(f"{args.same_output}: outputs {'differ in ' + ', '.join(differ) if differ else 'identical in every tree'}")
        if differ:
            raise SystemExit(1)
    lines = sum(1 for line in open(args.data, "rb") if line.strip())
    print(f"{args.data}: {lines} lines, {args.data.stat().st_size / 1e6:.1f} MB; load {os.getloadavg()[0]:.1f}")

    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            runs[name].append(whole_command(tree, args.data))
    print("| tree | whole command wall s (median) | lines/s | CPU s | per-line checks CPU s | lines/s | "
          "conversation_hash CPU s | rejected |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, tree in trees.items():
        wall = statistics.median(w for w, _ in runs[name])
        cpu = statistics.median(c for _, c in runs[name])
        n, checks, hashing, rejected = per_line(tree, args.data)
        print(f"| {name} | {wall:.2f} ({', '.join(f'{w:.2f}' for w, _ in runs[name])}) | {lines / wall:,.0f} | "
              f"{cpu:.2f} | {checks:.2f} | {n / checks:,.0f} | {hashing:.2f} | {rejected} |")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
