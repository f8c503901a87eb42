"""`sftpack convert`: embedded GGUF default model -> plain HF folder under models/."""

from __future__ import annotations

import argparse

from sftpack.default_model import convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="models/smollm2-135m-instruct", help="output folder")


def main(args: argparse.Namespace) -> int:
    manifest = convert(args.out)
    verb = "reused" if manifest["reused"] else "wrote"
    print(f"{verb} {args.out} ({manifest['parameters']:,} parameters)")
    print(args.out)
    return 0
