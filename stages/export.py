"""`sftpack export RUN_DIR_OR_CHECKPOINT --out DIR`: a trained run as one merged full model."""

from __future__ import annotations

import argparse

from sftpack.exporting.stage import FORMATS, OUTTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run folder (train.output_dir), or a checkpoint-N or final/ folder in it")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically; export.json last); with "
                        "--format gguf, a FILE.gguf path writes that file with the Modelfile and export.json beside it")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf: transformers folder (default); gguf: one GGUF file and an Ollama Modelfile")
    parser.add_argument("--outtype", choices=OUTTYPES, default="f16", help="GGUF weight type (format gguf)")


def main(args: argparse.Namespace) -> int:
    from sftpack import api

    manifest = api.export(args.source, args.out, format=args.format, outtype=args.outtype)
    print(f"exported {manifest['method']} model from {manifest['source']} to {args.out} "
          f"(stops on {', '.join(manifest['stop_tokens']) or 'its own eos'})")
    return 0
