"""DDP against FSDP2 on 2 CPU ranks (gloo) for the 135M model: peak RSS per rank, tokens/s, the
final save, and each rank's parameter share beside plan's estimate. Writes bench/FSDP.md's table.

    make pack                                     # out/packed/{train,val}.path (the demo data)
    .venv/bin/python bench/fsdp_bench.py --steps 8 --rounds 2

Each round launches `accelerate launch --config_file configs/accelerate/<strategy>.yaml
--num_processes 2 -m sftpack train --config configs/demo.yaml` for ddp and fsdp in turn (no eval,
no checkpoints, no sample prompts: training and the final save only). Each rank's RSS is polled
every 20 ms by pid; tokens/s is sftpack_run.json's tokens.total over train_seconds (the Trainer's
train_runtime), the save time its final_save_seconds, the shares its distributed.parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import bench_env, machine  # noqa: E402

from sftpack.planning.strategy import parameters_per_rank  # noqa: E402

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def launch(strategy: str, steps: int, out: Path) -> dict:
    packed = {name: (ROOT / "out" / "packed" / f"{name}.path").read_text().strip() for name in ("train", "val")}
    cmd = [ACCELERATE, "launch", "--config_file", f"configs/accelerate/{strategy}.yaml", "--num_processes", "2",
           "-m", "sftpack", "train", "--config", "configs/demo.yaml", f"data.train={packed['train']}",
           f"data.validation={packed['val']}", f"train.output_dir={out}", f"train.max_steps={steps}",
           "train.eval_strategy=no", "train.save_strategy=no", "train.load_best_model_at_end=false",
           "train.report_to=none", "train.logging_steps=1", "monitor.sample_prompts=[]"]
    env = {**bench_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    done = threading.Event()

    def poll() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                for child in root.children(recursive=True):
                    try:
                        if "sftpack" in " ".join(child.cmdline()) and "accelerate" not in child.cmdline()[1]:
                            peaks[child.pid] = max(peaks.get(child.pid, 0), child.memory_info().rss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                        pass
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    started = time.time()
    log, _ = proc.communicate()
    wall = time.time() - started
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{strategy}: exit {proc.returncode}\n{log[-3000:]}")
    manifest = json.loads((out / "sftpack_run.json").read_text())
    dist = manifest["distributed"]
    return {"strategy": strategy, "wall_s": wall, "rss_mib": sorted(v / 2**20 for v in peaks.values()),
            "tokens_per_s": manifest["tokens"]["total"] / manifest["train_seconds"],
            "train_s": manifest["train_seconds"], "save_s": manifest["final_save_seconds"],
            "per_rank": dist["parameters"]["per_rank"], "total": dist["parameters"]["total"],
            "estimate": parameters_per_rank(dist["parameters"]["total"], 2, dist["strategy"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = ROOT / "bench" / "work" / "fsdp"
    results: dict[str, list[dict]] = {"ddp": [], "fsdp": []}
    for r in range(args.rounds):
        for strategy in ("ddp", "fsdp") if r % 2 == 0 else ("fsdp", "ddp"):
            result = launch(strategy, args.steps, work / f"{strategy}-{r}")
            print(json.dumps(result), flush=True)
            results[strategy].append(result)
    med = statistics.median
    print(f"\nmachine: {machine()}  load average now: {os.getloadavg()}")
    print("| strategy | peak RSS per rank, lower / higher (MiB) | tokens/s | train s | final save s | params per rank "
          "(measured) | plan's estimate |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for strategy, runs in results.items():
        rss = [med(run["rss_mib"][i] for run in runs) for i in range(2)]
        print(f"| {strategy} | {rss[0]:,.0f} / {rss[1]:,.0f} | {med(r['tokens_per_s'] for r in runs):,.0f} | "
              f"{med(r['train_s'] for r in runs):.1f} | {med(r['save_s'] for r in runs):.2f} | "
              f"{' / '.join(f'{n:,}' for n in runs[0]['per_rank'])} of {runs[0]['total']:,} | "
              f"{runs[0]['estimate']:,} |")


if __name__ == "__main__":
    main()
