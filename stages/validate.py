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
    add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        tokenizer, data_format = args.tokenizer, "auto"
        if args.config:
            from pipeline.config import load_config

            config = load_config(args.config)
            tokenizer, data_format = tokenizer or config.model.name_or_path, config.data.format
        cfg = ValidateConfig(tokenizer=tokenizer, max_turn_chars=args.max_turn_chars, allow_rejects=args.allow_rejects)
        result = run(args.inputs, args.out_dir, cfg, read_options(args, data_format))
    except OSError as err:
        print(f"sftpack validate: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    print("\n".join(summary(result)), file=sys.stderr if result["totals"]["rejected"] else sys.stdout)
    return 1 if result["totals"]["rejected"] and not args.allow_rejects else 0
