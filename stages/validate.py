"""`sftpack validate`: check conversations (any container, any layout); write valid lines, rejects, counts."""

from __future__ import annotations

import argparse
import sys

from pipeline.validate import ValidateConfig, run, summary
from stages.input_options import add_input_arguments, read_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="JSONL (.gz, .zst), Parquet files, folders, globs or dataset names")
    parser.add_argument("--out-dir", required=True, help="folder for <name>.jsonl, .rejects.jsonl, .validate.json")
    parser.add_argument("--allow-rejects", action="store_true", help="exit 0 even when lines are rejected")
    parser.add_argument("--tokenizer", help="tokenizer folder: also check the chat template and control tokens")
    parser.add_argument("--config", help="run config YAML: model.name_or_path is the default --tokenizer, "
                                         "data.format the default --format")
    parser.add_argument("--max-turn-chars", type=int, default=ValidateConfig.max_turn_chars,
                        help="warn about messages longer than this many characters")
    parser.add_argument("--ray", metavar="ADDRESS", help="check on a Ray cluster: local, auto, HOST:PORT or "
                                                         "ray://HOST:PORT (same outputs; README \"More than one machine\")")
    add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        tokenizer, data_format, ray = args.tokenizer, "auto", args.ray
        if args.config:
            from pipeline.config import load_config

            config = load_config(args.config)
            tokenizer, data_format = tokenizer or config.model.name_or_path, config.data.format
            ray = ray or config.data.ray
        cfg = ValidateConfig(tokenizer=tokenizer, max_turn_chars=args.max_turn_chars, allow_rejects=args.allow_rejects)
        if ray:  # the same outputs, checked on a Ray cluster
            from pipeline.distributed_validate import run as run_on_ray

            result = run_on_ray(args.inputs, args.out_dir, cfg, read_options(args, data_format), ray)
        else:
            result = run(args.inputs, args.out_dir, cfg, read_options(args, data_format))
    except OSError as err:
        print(f"sftpack validate: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    print("\n".join(summary(result)), file=sys.stderr if result["totals"]["rejected"] else sys.stdout)
    return 1 if result["totals"]["rejected"] and not args.allow_rejects else 0
