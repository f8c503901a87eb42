"""sftpack: validate, template, mask and pack chat data into Arrow shards, then train with TRL.

The console script (`sftpack`, `python -m sftpack`): one subcommand per module of `stages/`
(installed as `sftpack.cli`); each exposes
`add_arguments(parser)` and `main(args) -> int`. This file dispatches, and is the one place that
turns an SftpackError into its message and exit code (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sftpack.errors import SftpackError

# subcommand -> one-line help; the module is stages/<subcommand>.py (a dash in the name is `_` there)
STAGES = {
    "convert": "convert the embedded GGUF default model into a plain HF folder",
    "validate": "check conversations (any container and layout); write valid lines, rejects and counts",
    "convert-data": "convert Parquet, sharegpt, alpaca, ... into messages JSONL",
    "mix": "one recipe: many sources -> one deduplicated, decontaminated, weighted training set",
    "pack": "template, mask and pack conversations into Arrow shards",
    "report": "dataset QA report (HTML + JSON)",
    "inspect": "print packed rows with trained tokens highlighted",
    "verify": "re-check a packed folder against its manifest",
    "train": "fine-tune with TRL SFTTrainer on packed shards",
    "sanity": "short training run that checks the setup works",
    "plan": "hyperparameters and batch arithmetic for a run",
    "export": "a trained run as one merged full model (HF folder or GGUF)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from sftpack import __version__

    parser = argparse.ArgumentParser(prog="sftpack", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sftpack {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the stage that runs (none for `sftpack --help`): fast start-up
            importlib.import_module(f"sftpack.cli.{name.replace('-', '_')}").add_arguments(stage_parser)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(f"sftpack.cli.{args.stage.replace('-', '_')}").main(args) or 0)
    except SftpackError as err:  # what went wrong, where and how to fix it
        print(f"sftpack {args.stage}: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
