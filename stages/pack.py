"""`sftpack pack`: check, template, mask and pack conversations (any container, any layout) into a reusable shard folder."""

from __future__ import annotations

import argparse
import sys

from sftpack import api
from sftpack.cli.data_options import add_data_arguments, data_flags
from sftpack.cli.input_options import add_input_arguments, read_arguments
from sftpack.packing.stage import summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="conversations as validate reads them: JSONL (.gz, .zst), Parquet, a mix folder or recipe, "
                                                  "folders, globs or dataset names (usually validate's output)")
    parser.add_argument("--out-dir", required=True, help="parent of the <fingerprint>/ folder")
    parser.add_argument("--config", help="run config YAML: model.name_or_path and data.* give the defaults")
    parser.add_argument("--allow-rejects", action="store_true", default=None,
                        help="pack the rest when records fail validate's checks (default: data.allow_rejects of "
                             "--config, else false: stop, naming them)")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="encoding processes (default: the available cores); the output is the same for any value")
    parser.add_argument("--ray", metavar="ADDRESS", help="encode and write on a Ray cluster: local, auto, HOST:PORT "
                                                         "or ray://HOST:PORT (same output; README \"More than one machine\")")
    add_data_arguments(parser)
    add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    flags = data_flags(args) | {"num_proc": args.num_proc, "ray": args.ray, "allow_rejects": args.allow_rejects}
    folder = api.pack(args.inputs, args.out_dir, config=args.config, **flags, **read_arguments(args))
    lines, warnings = summary(folder.manifest)
    print("\n".join(lines[:-1]))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(lines[-1])  # the folder, last: make reads it
    return 0
