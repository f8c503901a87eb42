"""`sftpack plan`: starting hyperparameters by model size, batch arithmetic and LR schedules."""

from __future__ import annotations

import argparse
import json
import sys

from sftpack import api
from sftpack.planning.format import format_plan, plan_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder with config.json (parameters counted, no weights loaded)")
    parser.add_argument("--params", help="parameter count instead of --model: 7e9, 7B, 135M")
    parser.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs (default 1)")
    parser.add_argument("--gpu-memory", type=float, metavar="GIB",
                        help="memory per GPU in GiB: the plan recommends the cheapest method that fits (full, "
                             "lora, qlora) and chooses DDP or FSDP2 for --gpus (--write-config also writes "
                             "<name>.accelerate.yaml beside the run config)")
    parser.add_argument("--per-device-batch", type=int, help="micro-batch per GPU")
    parser.add_argument("--target-batch", type=int, help="wanted effective batch; sets the accumulation steps")
    parser.add_argument("--examples", type=int, help="training rows (packed rows)")
    parser.add_argument("--data", help="packed folder; its manifest gives the rows")
    parser.add_argument("--epochs", type=float, help="num_train_epochs")
    parser.add_argument("--plot", help="PNG of the LR per step for cosine, linear, constant-with-warmup")
    parser.add_argument("--json", action="store_true", help="print only the planned values as one JSON object")
    parser.add_argument("--write-config", help="write a run config YAML with the planned train values")
    parser.add_argument("--write-json", help="also write the planned values (the --json object) to this file, last")
    parser.add_argument("--config", help="base run config: its model/data/train values fill what flags leave out")


def main(args: argparse.Namespace) -> int:
    plan = api.plan(model=args.model, params=args.params, gpus=args.gpus, per_device_batch=args.per_device_batch,
                    target_batch=args.target_batch, examples=args.examples, data=args.data, epochs=args.epochs,
                    config=args.config, gpu_memory=args.gpu_memory, plot=args.plot, write_config=args.write_config, write_json=args.write_json)
    if args.json:
        print(json.dumps(plan_json(plan)))
        for note in plan.notes:  # stdout stays one JSON object
            print(f"note: {note}", file=sys.stderr)
    else:
        print(format_plan(plan))
    accelerate = None
    if args.write_config:
        from sftpack.planning.strategy import accelerate_config_path, launch_strategy

        if launch_strategy(plan.strategy, plan.values["method"]):
            accelerate = accelerate_config_path(args.write_config)
    for label, path in (("plot", args.plot), ("config", args.write_config), ("accelerate config", accelerate),
                        ("json", args.write_json)):
        if path:
            print(f"wrote {label}: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
