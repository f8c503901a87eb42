"""`sftpack report`: dataset QA report (HTML + report.json) of conversations (any container, any layout) or a packed folder."""

from __future__ import annotations

import argparse

from pipeline.data_options import data_values
from pipeline.readers import ReadOptions
from pipeline.report import ReportConfig, run
from stages.data_options import add_data_arguments, data_flags
from stages.input_options import add_input_arguments, read_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="conversations as validate reads them (JSONL, .gz, .zst, Parquet, "
                                                  "folders, globs, dataset names), or one packed folder")
    parser.add_argument("--out", required=True, help="report .html path; report .json is written beside it")
    parser.add_argument("--config", help="run config YAML: model.name_or_path and data.* give the defaults")
    add_data_arguments(parser)
    add_input_arguments(parser)


def report_config(args: argparse.Namespace) -> tuple[ReportConfig, ReadOptions]:
    """Flags override the run config, which overrides ReportConfig's defaults (and data.format --format's)."""
    config, data_format = None, "auto"
    if args.config:  # the same mapping pack uses, so report and pack judge the same rows
        from pipeline.config import load_config

        config = load_config(args.config)
        data_format = config.data.format
    values = data_values(config, data_flags(args))
    values.pop("strategy", None)  # the estimate packs as pack does by default
    return ReportConfig(**values), read_options(args, data_format)


def main(args: argparse.Namespace) -> int:
    report = run(args.inputs, args.out, *report_config(args))
    for finding in report["findings"][:5]:
        print(f"  {finding['kind']}: {finding['count']} ({finding['share']:.1%}) {finding['message']}")
    print(f"wrote {report['html']} and {report['json']}")
    return 0
