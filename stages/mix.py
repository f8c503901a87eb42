"""`sftpack mix`: one recipe turns many sources into one clean, decontaminated, weighted training set."""

from __future__ import annotations

import argparse
import sys

from sftpack import api
from sftpack.mixing.stage import summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (README \"Mixtures\"; schemas/recipe.schema.json)")
    parser.add_argument("--out-dir", required=True, help="parent of the <fingerprint>/ folder")
    parser.add_argument("--allow-rejects", action="store_true", default=None,
                        help="mix the rest when lines fail the schema or the conversation rules, counted per rule "
                        "(default: the recipe's allow_rejects, false: stop naming file:line and rule)")
    parser.add_argument("--ray", metavar="ADDRESS", help="decontamination lookups, band keys and per-component "
                        "deduplication on a Ray cluster: local, auto, HOST:PORT or ray://HOST:PORT (the same files; --out-dir shared)")


def main(args: argparse.Namespace) -> int:
    lines, warnings = summary(api.mix(args.recipe, args.out_dir, ray=args.ray, allow_rejects=args.allow_rejects))
    print("\n".join(lines[:-1]))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(lines[-1])  # the folder, last: make reads it
    return 0
