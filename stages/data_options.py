"""Command-line options for how conversations become trained tokens, shared by pack and report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sftpack.config.data_options import CHOICES, DATA_KEYS, DEFAULT_MAX_LENGTH
from sftpack.errors import SftpackError


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--tokenizer, --max-length, --chat-template, --strategy, --train-on, --turns, --reasoning,
    --truncation (each defaults to the run config's value, else the stage's default)."""
    group = parser.add_argument_group("data options (default: --config's model and data sections)")
    group.add_argument("--tokenizer", help="tokenizer (model) folder")
    group.add_argument("--max-length", type=int, help="longest packed row in tokens; longer examples are dropped "
                                                      f"or truncated (default: {DEFAULT_MAX_LENGTH} without --config)")
    group.add_argument("--chat-template", help="Jinja template file replacing the tokenizer's")
    group.add_argument("--strategy", choices=CHOICES["strategy"], help="bfd: pack several examples per row; "
                                                                        "none: one per row")
    group.add_argument("--train-on", choices=CHOICES["train_on"],
                       help="every assistant turn, or the last only (an assistant message with \"train\": false "
                            "is never trained)")
    group.add_argument("--turns", choices=CHOICES["turns"],
                       help="auto: split where the template renders a turn unlike at inference; whole: as rendered")
    group.add_argument("--reasoning", choices=CHOICES["reasoning"], help="assistant reasoning: train, mask or drop")
    group.add_argument("--truncation", choices=CHOICES["truncation"], help="examples over --max-length")
    group.add_argument("--template-arg", action="append", metavar="KEY=VALUE", dest="template_args",
                       help="a chat template argument for every render (repeatable; VALUE parsed as JSON when it "
                            "parses): --template-arg enable_thinking=false; a record's chat_template_kwargs win")
    group.add_argument("--stop-tokens", nargs="+", metavar="TOKEN",
                       help="the tokens that end an assistant turn (default: generation_config.json's "
                            "eos_token_id, else inferred from the template's rendering, with a warning)")


def data_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The data options given on the command line (None: not given).

    Raises:
        SftpackError: a --template-arg without KEY=.
    """
    flags = {key: getattr(args, key) for key in DATA_KEYS if key != "chat_template_kwargs"}
    flags["stop_tokens"] = None if args.stop_tokens is None else tuple(args.stop_tokens)
    flags["chat_template_kwargs"] = template_args(args.template_args) if args.template_args else None
    return flags


def template_args(items: list[str]) -> dict[str, Any]:
    """{key: value} from KEY=VALUE strings; a VALUE that parses as JSON is that JSON value
    (false, 3, "x", [..]), else the text itself (reasoning_effort=high).

    Raises:
        SftpackError: an item with no "=" or an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SftpackError(f"--template-arg {item!r}: expected KEY=VALUE, "
                               f"e.g. --template-arg enable_thinking=false")
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text
    return out
