"""`sftpack verify PACKED_DIR`: re-check shard checksums, counts and row invariants."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sftpack.errors import SftpackError
from sftpack.store.shards import verify_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a packed folder (out/packed/<fingerprint>)")


def main(args: argparse.Namespace) -> int:
    if not Path(args.folder).is_dir():
        raise SftpackError(f"{args.folder}: no such folder; give a packed folder (out/packed/<fingerprint>)")
    problems = verify_folder(args.folder)
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"OK {args.folder}: every shard matches its manifest and the row invariants hold")
    return 0
