"""Command-line options for how raw conversations are read, shared by validate, convert-data, pack and report."""

from __future__ import annotations

import argparse
from typing import Any

from sftpack.io.layouts import FORMATS, TARGETS, ColumnMap, parse_role_map


def add_input_arguments(parser: argparse.ArgumentParser, config: bool = True) -> None:
    """--format, --split and the column map; `config`: the stage takes --config (data.format)."""
    group = parser.add_argument_group("input layout (README \"Input formats\")")
    default = "data.format of --config, else auto" if config else "auto"
    group.add_argument("--format", choices=FORMATS,
                       help=f"layout of the inputs (default: {default}: from the first record's keys)")
    group.add_argument("--split", help="split of a dataset name or DatasetDict folder (default: train)")
    group.add_argument("--messages-field", help="field holding the list of turns (messages / conversations)")
    group.add_argument("--role-key", help="key of a turn naming its speaker (role / from)")
    group.add_argument("--content-key", help="key of a turn holding its text (content / value)")
    group.add_argument("--role-map", help=f"ROLE=NAME pairs, e.g. user=human,assistant=gpt; ROLE is one of "
                                          f"{', '.join(TARGETS)}")
    group.add_argument("--system-field", help="column holding a system prompt (sharegpt, alpaca: system)")
    group.add_argument("--tools-field", help="column holding tool definitions (default: tools)")


def read_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """format, split and columns as the Python API takes them (format None: the config's
    data.format, else auto)."""
    columns = ColumnMap(messages=args.messages_field, role=args.role_key, content=args.content_key,
                        roles=parse_role_map(args.role_map or ""), system=args.system_field, tools=args.tools_field)
    return {"format": args.format, "split": args.split, "columns": columns}
