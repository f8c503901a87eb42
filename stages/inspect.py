"""`sftpack inspect`: print packed rows decoded, trained tokens highlighted, sequences marked."""

from __future__ import annotations

import argparse
import sys

from sftpack.reporting.inspect import InspectConfig, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="packed folder (out/packed/<fingerprint>)")
    parser.add_argument("--row", type=int, help="row number, from 0 (default 0)")
    parser.add_argument("--example", help="show the sequence of this example id")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="ANSI colour for trained tokens; else [[...]] brackets (auto: on a terminal)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the manifest's tokenizer.name_or_path)")


def main(args: argparse.Namespace) -> int:
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    text = run(args.folder, InspectConfig(row=args.row, example=args.example, color=color,
                                           tokenizer=args.tokenizer))
    sys.stdout.write(text)
    return 0
