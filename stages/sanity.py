"""`sftpack sanity --config FILE.yaml [key=value ...]`: a short run that shows the setup learns."""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config YAML (model, data, monitor, train)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.learning_rate=1e-4")
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps (10-20)")
    parser.add_argument("--examples", type=int, default=64, help="conversations to train on (50-100)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="length of the greedy answers")
    parser.add_argument("--out-dir", help="where the run and sanity.{txt,json} go (default: train.output_dir/sanity)")


def main(args: argparse.Namespace) -> int:
    from sftpack.config.run_config import load_config
    from sftpack.training.sanity import SanityConfig, format_report, run

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    scfg = SanityConfig(steps=args.steps, examples=args.examples, max_new_tokens=args.max_new_tokens,
                        out_dir=args.out_dir)
    report = run(load_config(args.config, args.overrides), scfg)
    print(format_report(report))
    if report.get("files"):
        print(f"wrote {' and '.join(report['files'])}")
    return 0 if report["passed"] else 1
