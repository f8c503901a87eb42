"""sftpack: validate, template, mask and pack chat data into Arrow shards, then train with TRL.

The console script has one subcommand per stage module in `stages/`.
Each stage module exposes `add_arguments(parser)` and `main(args) -> int`; this file only
dispatches. A stage whose module is not built yet exits 2 with "not implemented yet".
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under stages/, one-line help)
STAGES = {
    "convert": ("convert", "convert the embedded GGUF default model into a plain HF folder"),
    "validate": ("validate", "check messages JSONL; write valid lines, rejects and counts"),
    "pack": ("pack", "template, mask and pack conversations into Arrow shards"),
    "report": ("report", "dataset QA report (HTML + JSON)"),
    "inspect": ("inspect", "print packed rows with trained tokens highlighted"),
    "verify": ("verify", "re-check a packed folder against its manifest"),
    "train": ("train", "fine-tune with TRL SFTTrainer on packed shards"),
    "sanity": ("sanity", "short training run that checks the setup works"),
    "plan": ("plan", "hyperparameters and batch arithmetic for a run"),
}


def _load(module: str):
    try:
        return importlib.import_module(f"stages.{module}")
    except ModuleNotFoundError as err:
        if err.name == f"stages.{module}":
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="sftpack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    modules = {}
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in STAGES.items():
        if chosen in STAGES and name != chosen:  # import only the stage that runs: fast start-up
            sub.add_parser(name, help=help_text)
            continue
        module = _load(module_name)
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        if module is not None:
            module.add_arguments(stage_parser)
        else:
            stage_parser.add_argument("rest", nargs=argparse.REMAINDER)
        modules[name] = module
    args = parser.parse_args(argv)
    module = modules[args.stage]
    if module is None:
        print(f"sftpack {args.stage}: not implemented yet", file=sys.stderr)
        return 2
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
