"""`sftpack config-sections --config FILE --out-dir DIR`: the model and data sections as files for make."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config YAML")
    parser.add_argument("--out-dir", required=True, help="folder for model.json and data.json")


def main(args: argparse.Namespace) -> int:
    from sftpack.config.sections import write_sections

    for path in write_sections(args.config, args.out_dir):
        # stderr: make reads this at parse time, where stdout would be read as Makefile text.
        print(f"config-sections: wrote {path} (its section of {args.config} changed)", file=sys.stderr)
    return 0


if __name__ == "__main__":  # the Makefile runs `python -m sftpack.cli.config_sections`
    from sftpack import cli

    # Through the CLI's one error handler (message, exit code); listed here, not in
    # cli.STAGES, as a helper for make rather than a stage users run.
    cli.STAGES.setdefault("config-sections", __doc__.splitlines()[0].split(": ", 1)[1])
    sys.exit(cli.main(["config-sections", *sys.argv[1:]]))
