"""Full fine-tuning against LoRA on the demo data (SmolLM2-135M, CPU): whole `sftpack train` runs.

    python bench/peft_train.py train  [--steps 16]   # tokens/s, peak RSS, saved size, steps to loss < 0.5
    python bench/peft_train.py memory [--steps 3]    # measured peak against pipeline/planning/memory.py

`train` runs configs/demo.yaml and configs/demo-lora.yaml as they are, with logging every step,
no evaluation and no checkpoints (the saved output is final/), both at once; bench/PEFT.md
holds the results. `memory` trains a few steps in a child process per method and compares the
peak RSS above the process's own floor (libraries imported, data packed, nothing loaded) with
the estimate `sftpack plan` prints.
"""

from __future__ import annotations

import argparse
import ast
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SFTPACK, bench_env, run_measured  # noqa: E402

CONFIGS = {"lora": "configs/demo-lora.yaml", "full": "configs/demo.yaml"}


def _logs(text: str) -> list[dict]:
    """The Trainer's printed log dicts, in order."""
    logs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{'") and line.endswith("}"):
            try:
                logs.append(ast.literal_eval(line))
            except (ValueError, SyntaxError):
                pass
    return logs


def _train_one(method: str, steps: int) -> dict:
    out = ROOT / "out" / "bench" / f"peft-{method}"
    cmd = [SFTPACK, "train", "--config", CONFIGS[method], f"train.output_dir={out}", f"train.max_steps={steps}",
           "train.logging_steps=1", "train.eval_strategy=no", "train.save_strategy=no",
           "train.load_best_model_at_end=false", "train.report_to=none"]  # the demo's sample prompts kept
    return cmd, out, run_measured(cmd, timeout=5400)


def train(steps: int) -> dict:
    """Both methods at once, so they train under the same load (this machine is shared)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(CONFIGS)) as pool:
        runs = dict(zip(CONFIGS, pool.map(lambda method: _train_one(method, steps), CONFIGS)))
    results = {}
    for method, (cmd, out, run) in runs.items():
        logs = [entry for entry in _logs(run.stdout + run.stderr) if "loss" in entry]
        losses = [float(entry["loss"]) for entry in logs]
        speeds = [float(entry["trained_tokens_per_second"]) for entry in logs[1:]]  # the first step warms up
        manifest = json.loads((out / "sftpack_run.json").read_text())
        below = next((i + 1 for i, loss in enumerate(losses) if loss < 0.5), None)
        results[method] = {
            "command": " ".join(cmd[1:]),
            "trained_tokens_per_s_median": round(statistics.median(speeds), 1),
            "peak_rss_mib": round(run.peak_rss_mib),
            "saved_mib": round(sum(p.stat().st_size for p in (out / "final").rglob("*") if p.is_file()) / 2**20, 1),
            "steps_to_loss_below_0.5": below,
            "losses": [round(x, 3) for x in losses],
            "trainable_parameters": manifest["trainable_parameters"],
            "total_parameters": manifest["total_parameters"],
            "samples": manifest["samples"],
            "wall_s": round(run.wall_s, 1),
            "load": [round(run.load_before, 1), round(run.load_after, 1)],
        }
        print(json.dumps({method: results[method]}), flush=True)
    return results


CHILD = """
import json, resource, sys, psutil
from sftpack.config.run_config import load_config
from sftpack.training.data import prepare_data
from sftpack.training.trainer import build_trainer
cfg = load_config(sys.argv[1], sys.argv[2:])
prepare_data(cfg)  # packed (or reused) before the floor is read
floor = psutil.Process().memory_info().rss
session = build_trainer(cfg)
session.trainer.train()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"floor": floor, "peak": peak}))
"""


def memory(steps: int, methods: list[str], checkpointing_options: tuple[bool, ...]) -> dict:
    from sftpack.planning.memory import GIB, ModelShape, estimate

    shape = ModelShape.from_config(ROOT / "models" / "smollm2-135m-instruct")
    results = {}
    for method in methods:
        config = CONFIGS[method]
        for checkpointing in checkpointing_options:
            out = ROOT / "out" / "bench" / f"peft-memory-{method}"
            overrides = [f"train.output_dir={out}", f"train.max_steps={steps}", "train.eval_strategy=no",
                         "train.save_strategy=no", "train.load_best_model_at_end=false", "train.report_to=none",
                         "monitor.sample_prompts=[]", f"train.gradient_checkpointing={str(checkpointing).lower()}"]
            proc = subprocess.run([sys.executable, "-c", CHILD, config, *overrides], cwd=ROOT, env=bench_env(),
                                  capture_output=True, text=True, check=True)
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            planned = estimate(shape, method, tokens=512, dtype_bytes=4, checkpointing=checkpointing).gib()
            key = f"{method}{' +checkpointing' if checkpointing else ''}"
            results[key] = {"measured_above_floor_gib": round((measured["peak"] - measured["floor"]) / GIB, 2),
                            "estimate_gib": planned, "floor_gib": round(measured["floor"] / GIB, 2)}
            print(json.dumps({key: results[key]}), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("train", "memory"))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--method", choices=sorted(CONFIGS), action="append", help="memory: only these (default both)")
    parser.add_argument("--no-checkpointing-runs", action="store_true", help="memory: skip the checkpointed runs")
    args = parser.parse_args()
    if args.what == "train":
        train(args.steps or 16)
    else:
        memory(args.steps or 3, args.method or ["full", "lora"],
               (False,) if args.no_checkpointing_runs else (False, True))


if __name__ == "__main__":
    main()
