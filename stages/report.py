"""`sftpack report`: dataset QA report (HTML + report.json) of conversations (any container, any layout) or a packed folder."""

from __future__ import annotations

import argparse

from sftpack import api
from sftpack.errors import SftpackError
from sftpack.cli.data_options import add_data_arguments, data_flags
from sftpack.cli.input_options import add_input_arguments, read_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", help="conversations as validate reads them (JSONL, .gz, .zst, Parquet, "
                                                  "folders, globs, dataset names), or one packed folder")
    parser.add_argument("--out", required=True, help="report .html path; report .json is written beside it")
    parser.add_argument("--config", help="run config YAML: model.name_or_path and data.* give the defaults")
    parser.add_argument("--recipe", help="a mix recipe: the mixture before and after, instead of inputs")
    parser.add_argument("--mix-dir", default="out/mix", help="where --recipe is mixed (or reused); default out/mix")
    add_data_arguments(parser)
    add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.recipe:
        report = api.report(args.inputs, args.out, recipe=args.recipe, mix_dir=args.mix_dir)
        for row in report["shares"]:
            print(f"  {row['source']}: in {row['in']} ({row['share in']}) -> out {row['out']} ({row['share out']})")
        print(f"wrote {report['html']} and {report['json']}")
        return 0
    if not args.inputs:
        raise SftpackError("report: give inputs (conversations or a packed folder), or --recipe")
    report = api.report(args.inputs, args.out, config=args.config, **data_flags(args), **read_arguments(args))
    print(f"{report['verdict']['label']}")
    for finding in report["findings"][:5]:
        print(f"  {finding['title']}: {finding['count']:,} ({finding['share']:.1%}) {finding['message']}; "
              f"change: {finding['advice']}")
    print(f"wrote {report['html']} and {report['json']}")
    return 0
