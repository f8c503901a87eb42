"""`sftpack report`: dataset QA report (HTML + report.json) of conversations (any container, any layout) or a packed folder."""

from __future__ import annotations

import argparse

from sftpack import api
from sftpack.cli.data_options import add_data_arguments, data_flags
from sftpack.cli.input_options import add_input_arguments, read_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="conversations as validate reads them (JSONL, .gz, .zst, Parquet, "
                                                  "folders, globs, dataset names), or one packed folder")
    parser.add_argument("--out", required=True, help="report .html path; report .json is written beside it")
    parser.add_argument("--config", help="run config YAML: model.name_or_path and data.* give the defaults")
    add_data_arguments(parser)
    add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    report = api.report(args.inputs, args.out, config=args.config, **data_flags(args), **read_arguments(args))
    print(f"{report['verdict']['label']}")
    for finding in report["findings"][:5]:
        print(f"  {finding['title']}: {finding['count']:,} ({finding['share']:.1%}) {finding['message']}; "
              f"change: {finding['advice']}")
    print(f"wrote {report['html']} and {report['json']}")
    return 0
