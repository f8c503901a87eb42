"""`sftpack train --config FILE.yaml [key=value ...]`: fine-tune on packed shards with TRL."""

from __future__ import annotations

import argparse
import logging
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config YAML (model, data, monitor, train)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.max_steps=20 train.resume_from_checkpoint=true")


def main(args: argparse.Namespace) -> int:
    from sftpack import api

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    manifest = api.train(args.config, args.overrides)
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch, one summary
        return 1 if manifest["status"] == "stopped_nonfinite" else 0
    best = manifest["best_eval_loss"]
    print(f"{manifest['status']}: {manifest['steps']} steps, {manifest['epochs'] or 0:.2f} epochs, "
          f"best eval loss {'n/a' if best is None else f'{best:.4f}'}, "
          f"{len(manifest['health_warnings'])} health warning(s); final model: {manifest['final']}")
    for sample in manifest["samples"]:
        print(f"\nprompt: {sample['prompt']}\n  before: {sample['before']}\n  after:  {sample['after']}")
    return 1 if manifest["status"] == "stopped_nonfinite" else 0
