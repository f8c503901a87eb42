"""`sftpack validate`: check conversations (any container, any layout); write valid lines, rejects, counts."""

from __future__ import annotations

import argparse
import sys

from sftpack import api
from sftpack.validation.stage import ValidateConfig, reject_policy, summary
from sftpack.cli.data_options import template_args
from sftpack.cli.input_options import add_input_arguments, read_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="JSONL (.gz, .zst), Parquet files, folders, globs or dataset names")
    parser.add_argument("--out-dir", required=True, help="folder for <name>.jsonl, .rejects.jsonl, .validate.json")
    parser.add_argument("--allow-rejects", action="store_true", help="exit 0 even when lines are rejected")
    parser.add_argument("--tokenizer", help="tokenizer folder: also check the chat template and control tokens")
    parser.add_argument("--chat-template", help="Jinja template file the template check renders with, instead of "
                                                "the tokenizer's (as pack --chat-template)")
    parser.add_argument("--template-arg", action="append", metavar="KEY=VALUE", dest="template_args",
                        help="a chat template argument for every render, as pack --template-arg (repeatable)")
    parser.add_argument("--config", help="run config YAML: model.name_or_path is the default --tokenizer, "
                                         "data.format the default --format, data.chat_template[_kwargs] the default "
                                         "template and arguments")
    parser.add_argument("--max-turn-chars", type=int, default=ValidateConfig.max_turn_chars,
                        help="warn about messages longer than this many characters")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="checking processes (default: the available cores); the outputs are the same for any value")
    parser.add_argument("--ray", metavar="ADDRESS", help="check on a Ray cluster: local, auto, HOST:PORT or "
                                                         "ray://HOST:PORT (same outputs; README \"More than one machine\")")
    add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        result = api.validate(args.inputs, args.out_dir, config=args.config, tokenizer=args.tokenizer, ray=args.ray,
                              num_proc=args.num_proc,
                              max_turn_chars=args.max_turn_chars, allow_rejects=args.allow_rejects,
                              chat_template=args.chat_template,
                              chat_template_kwargs=template_args(args.template_args) if args.template_args else None,
                              **read_arguments(args))
    except OSError as err:
        print(f"sftpack validate: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    print("\n".join(summary(result)), file=sys.stderr if result["totals"]["rejected"] else sys.stdout)
    allowed = all(m["options"]["allow_rejects"] for m in result["files"])  # the flag, else data.allow_rejects
    reject_policy(result, args.out_dir, allowed, "go on with the kept lines")
    return 0
