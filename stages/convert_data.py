"""`sftpack convert-data IN --out OUT.jsonl`: any container and layout -> messages JSONL."""

from __future__ import annotations

import argparse
import sys

from sftpack.io.convert import ConvertConfig, run, summary
from sftpack.api import read_options
from sftpack.cli.input_options import add_input_arguments, read_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="JSONL (.gz, .zst), Parquet file, folder, glob or dataset name")
    parser.add_argument("--out", required=True, help="messages JSONL to write (rejects and manifest beside it)")
    parser.add_argument("--allow-rejects", action="store_true", help="exit 0 even when rows cannot be converted")
    add_input_arguments(parser, config=False)


def main(args: argparse.Namespace) -> int:
    cfg = ConvertConfig(read=read_options(None, **read_arguments(args)), allow_rejects=args.allow_rejects)
    manifest = run(args.input, args.out, cfg)
    rejected = manifest["counts"]["rejected"]
    print("\n".join(summary(manifest)), file=sys.stderr if rejected else sys.stdout)
    return 1 if rejected and not args.allow_rejects else 0
