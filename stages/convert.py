"""`sftpack convert`: embedded GGUF default model -> plain HF folder under models/."""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import SftpackError
from pipeline.model_convert import convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="models/smollm2-135m-instruct", help="output folder")


def main(args: argparse.Namespace) -> int:
    try:
        manifest = convert(args.out)
    except SftpackError as err:
        print(f"sftpack convert: {err}", file=sys.stderr)
        return err.exit_code
    verb = "reused" if manifest["reused"] else "wrote"
    print(f"{verb} {args.out} ({manifest['parameters']:,} parameters)")
    print(args.out)
    return 0
