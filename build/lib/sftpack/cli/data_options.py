"""Command-line options for how conversations become trained tokens, shared by pack and report."""

from __future__ import annotations

import argparse
from typing import Any

from sftpack.config.data_options import CHOICES, DATA_KEYS


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--tokenizer, --max-length, --chat-template, --strategy, --train-on, --turns, --reasoning,
    --truncation (each defaults to the run config's value, else the stage's default)."""
    group = parser.add_argument_group("data options (default: --config's model and data sections)")
    group.add_argument("--tokenizer", help="tokenizer (model) folder")
    group.add_argument("--max-length", type=int, help="longest packed row in tokens; longer examples are dropped "
                                                      "or truncated")
    group.add_argument("--chat-template", help="Jinja template file replacing the tokenizer's")
    group.add_argument("--strategy", choices=CHOICES["strategy"], help="bfd: pack several examples per row; "
                                                                        "none: one per row")
    group.add_argument("--train-on", choices=CHOICES["train_on"], help="every assistant turn, or the last only")
    group.add_argument("--turns", choices=CHOICES["turns"],
                       help="auto: split where the template renders a turn unlike at inference; whole: as rendered")
    group.add_argument("--reasoning", choices=CHOICES["reasoning"], help="assistant reasoning: train, mask or drop")
    group.add_argument("--truncation", choices=CHOICES["truncation"], help="examples over --max-length")


def data_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The data options given on the command line (None: not given)."""
    return {key: getattr(args, key) for key in DATA_KEYS}
