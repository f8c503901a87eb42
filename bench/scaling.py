"""Scaling: `sftpack pack` locally (one process) vs `--ray local` (Ray on this machine's CPUs), on
the real data repeated 10x and 100x; tokens/s, peak driver memory, identical shards; then a
projection to 100M conversations on 16 nodes from the measured per-CPU rate and the driver's
packing time on 100M synthetic lengths (bench/scaling_packing.py). Writes bench/SCALING.md.

    .venv/bin/python bench/scaling.py [--repeats 10 100] [--skip-packing]

Needs root and iproute2: the Ray run is made inside a network namespace with only `lo` up (as the
tests do), so Ray binds loopback and nothing leaves the machine; its processes are ended by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODEL, PY, ROOT, SFTPACK, WORK, bench_env, machine, make_inputs, short, versions  # noqa: E402

NS = f"sftpack-bench-{os.getpid()}"
CONVERSATIONS = 100_000_000
NODES, CPUS_PER_NODE = 16, 16


def measured(cmd: list[str], env: dict[str, str]) -> dict:
    """Run `cmd`; peak RSS of the process itself (the driver) and of its whole tree, wall seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peaks = {"driver": 0, "tree": 0}
    stop = threading.Event()

    def poll() -> None:
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs if p.is_running()]
            except psutil.Error:
                rss = []
            if rss:
                peaks["driver"] = max(peaks["driver"], rss[0])
                peaks["tree"] = max(peaks["tree"], sum(rss))
            stop.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = proc.communicate()
    stop.set()
    poller.join()
    wall = time.perf_counter() - started
    _end_session(proc.pid)
    if proc.returncode:
        raise SystemExit(f"bench: failed (rc {proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    folder = Path(out.strip().splitlines()[-1])
    manifest = json.loads((folder / "manifest.json").read_text())
    return {"wall_s": wall, "driver_mib": peaks["driver"] / 2**20, "tree_mib": peaks["tree"] / 2**20,
            "folder": folder, "manifest": manifest, "cmd": cmd}


def _end_session(sid: int) -> None:
    """SIGKILL what is left of the session `sid` started (Ray's daemons in a --ray local run), by PID."""
    for _ in range(20):
        rows = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.splitlines()
        left = [int(pid) for pid, s in (r.split() for r in rows if r.strip()) if int(s) == sid]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def pack_cmd(data: Path, out: Path, ray: bool) -> list[str]:
    cmd = [SFTPACK, "pack", str(data), "--tokenizer", str(MODEL), "--max-length", "1024", "--out-dir", str(out),
           "--num-proc", "1"]
    if ray:
        return ["ip", "netns", "exec", NS] + cmd + ["--ray", "local"]
    return cmd


def sha256_rate(path: Path) -> float:
    """MB/s of sha256 over `path` on one core: the driver hashes every input for the fingerprint."""
    import hashlib

    started, size, digest = time.perf_counter(), 0, hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size / 2**20 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--skip-packing", action="store_true", help="reuse bench/work/scaling_packing.json")
    args = parser.parse_args()
    env = bench_env() | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(["ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"], check=True)
    results = []
    try:
        for repeats in args.repeats:
            data = make_inputs(f"x{repeats}", repeats)
            row = {"repeats": repeats, "data": data, "bytes": data.stat().st_size}
            for engine in ("local", "ray"):
                out = WORK / f"scaling_{engine}_x{repeats}"
                shutil.rmtree(out, ignore_errors=True)
                run = measured(pack_cmd(data, out, engine == "ray"), env)
                shutil.rmtree(out, ignore_errors=True)
                row[engine] = run
                print(f"x{repeats} {engine}: {run['wall_s']:.1f}s, driver {run['driver_mib']:.0f} MiB", flush=True)
            same = row["local"]["manifest"]["shards"] == row["ray"]["manifest"]["shards"] and \
                row["local"]["folder"].name == row["ray"]["folder"].name
            row["identical"] = same
            results.append(row)
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", NS], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", NS], check=False)

    packing_json = WORK / "scaling_packing.json"
    packing_cmd = ["taskset", "-c", "0", PY, str(ROOT / "bench" / "scaling_packing.py"), "--n", "100000000"]
    if not args.skip_packing or not packing_json.is_file():
        done = subprocess.run(packing_cmd, cwd=ROOT, env=bench_env(), capture_output=True, text=True, check=True)
        packing_json.write_text(done.stdout)
    packing = json.loads(packing_json.read_text().strip().splitlines()[-1])
    hash_mb_s = sha256_rate(results[-1]["data"])
    write_report(results, packing, packing_cmd, hash_mb_s)


def write_report(results: list[dict], packing: dict, packing_cmd: list[str], hash_mb_s: float) -> None:
    big = results[-1]
    totals = big["local"]["manifest"]["totals"]
    tokens = totals["tokens"]
    cpus = big["ray"]["manifest"]["engine"]["cpus"]
    ray_rate = tokens / big["ray"]["wall_s"]
    per_cpu = ray_rate / cpus
    per_conversation = tokens / totals["examples_read"]
    bytes_per_conversation = big["bytes"] / totals["examples_read"]
    all_tokens = CONVERSATIONS * per_conversation
    cluster_cpus = NODES * CPUS_PER_NODE
    encode_s = all_tokens / (per_cpu * cluster_cpus)
    hash_s = CONVERSATIONS * bytes_per_conversation / 2**20 / hash_mb_s
    lines = [
        "# Scaling: pack on one machine and on Ray",
        "",
        f"Written by `bench/scaling.py` on {time.strftime('%Y-%m-%dT%H:%M:%S')}. One run per cell; the 2 cores are "
        f"shared with other work (load average at the end: {os.getloadavg()[0]:.2f}), so treat seconds as +-20%.",
        "",
        "## Machine and versions",
        "",
        *[f"- {k}: {v}" for k, v in machine().items()],
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions().items())}, ray {ray_version()}",
        "",
        "## Commands",
        "",
        "Inputs: `bench/work/x<N>.jsonl`, the three real files repeated N times (ids made distinct, "
        "`bench/common.py:make_inputs`). `--ray local` runs inside a network namespace with only `lo` up "
        "(`ip netns add NS; ip netns exec NS ip link set lo up`), so Ray binds loopback.",
        "",
        "```",
        *[short(r[e]["cmd"]).replace(NS, "NS") for r in results for e in ("local", "ray")],
        short(packing_cmd),
        "```",
        "",
        "## One machine: local vs `--ray local` (2 CPUs)",
        "",
        "| data | engine | wall s | tokens/s | peak driver RSS MiB | peak RSS, all processes MiB | shards identical |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        t = r["local"]["manifest"]["totals"]["tokens"]
        for engine, label in (("local", "local, 1 process (2 threads)"), ("ray", "--ray local, 2 CPUs")):
            run = r[engine]
            lines.append(f"| x{r['repeats']} ({t:,} tokens) | {label} | {run['wall_s']:.1f} | "
                         f"{t / run['wall_s']:,.0f} | {run['driver_mib']:.0f} | {run['tree_mib']:.0f} | "
                         f"{'yes' if r['identical'] else 'NO'} |")
    lines += [
        "",
        "Ray's fixed cost (starting Ray, Ray Data's executor, one tokenizer load per actor, three Ray Data "
        "passes) is tens of seconds here, so on 2 CPUs `--ray` pays only at the larger size, if at all: "
        "the local run already overlaps templating and tokenizing on two threads. What Ray buys is more "
        "machines; the driver's memory stays at what the lengths take (8 bytes a sequence), the token "
        "data never passes through it.",
        "",
        "## The driver's packing on 100M sequences",
        "",
        f"`pack_bins` on {packing['n']:,} synthetic lengths ({packing['lengths']}), max_length "
        f"{packing['max_length']}, one core:",
        "",
        "| seconds | peak RSS MiB (lengths included) | rows | L2 bound | over L2 | packing efficiency |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {packing['pack_bins_s']} | {packing['peak_rss_mib']} | {packing['rows']:,} | {packing['l2_bound']:,} | "
        f"{packing['over_l2_pct']}% | {packing['efficiency']:.4%} |",
        "",
        "From 2M sequences on, `pack_bins` works on per-length counts (`pipeline/packing/counts.py:pack_counts`): "
        "best-fit-decreasing on counts (the same rows as the item-by-item BFD, tested) or a pattern fill "
        "when that needs fewer rows; rows come back as flat int32 indices plus offsets (`PackedRows`).",
        "",
        "## On paper: 100M conversations on 16 nodes",
        "",
        f"- Measured: `--ray local` on x{big['repeats']}: {ray_rate:,.0f} tokens/s on {cpus} CPUs = "
        f"**{per_cpu:,.0f} tokens/s per CPU** (whole command, start-up included, so a lower bound).",
        f"- The real data averages {per_conversation:.0f} packed tokens and {bytes_per_conversation:.0f} bytes per "
        f"conversation: 100M conversations = {all_tokens / 1e9:.1f}B tokens, "
        f"{CONVERSATIONS * bytes_per_conversation / 1e9:.0f} GB of JSONL.",
        f"- 16 nodes x {CPUS_PER_NODE} CPUs = {cluster_cpus} CPUs: encode and write "
        f"{all_tokens:.3g} / ({per_cpu:,.0f} x {cluster_cpus}) = **{encode_s / 60:.0f} min**, if the shared "
        "storage keeps up (each CPU reads ~1 MB/s of JSONL and writes ~2x that in spill and shards).",
        f"- Serial on the driver: hashing the inputs for the fingerprint at {hash_mb_s:.0f} MB/s = "
        f"{hash_s / 60:.0f} min; `pack_bins` {packing['pack_bins_s'] / 60:.1f} min; lengths and trained "
        f"tokens in memory 8 bytes a sequence = {CONVERSATIONS * 8 / 2**30:.1f} GiB, plus pack_bins' peak.",
        f"- Total: about **{(encode_s + hash_s + packing['pack_bins_s']) / 60:.0f} min**, the driver's "
        "serial part being the sha256 of the inputs (pack's fingerprint), not packing.",
        "- Not measured here: the object store and scheduling overhead at 256 CPUs (Ray Data schedules "
        "one task per ~8 MB byte range: ~12k ranges), and the shared file system's throughput.",
        "",
    ]
    (ROOT / "bench" / "SCALING.md").write_text("\n".join(lines))
    print((ROOT / "bench" / "SCALING.md").read_text())


def ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


if __name__ == "__main__":
    main()
