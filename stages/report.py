"""`sftpack report`: dataset QA report (HTML + report.json) of conversations (any container, any layout) or a packed folder."""

from __future__ import annotations

import argparse

from pipeline.readers import ReadOptions
from pipeline.report import ReportConfig, run
from stages.input_options import add_input_arguments, read_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="conversations as validate reads them (JSONL, .gz, .zst, Parquet, "
                                                  "folders, globs, dataset names), or one packed folder")
    parser.add_argument("--out", required=True, help="report .html path; report .json is written beside it")
    parser.add_argument("--config", help="run config YAML: model.name_or_path and data.* give the defaults")
    parser.add_argument("--tokenizer", help="tokenizer (model) folder; without it no token statistics")
    parser.add_argument("--max-length", type=int, help="row length pack would use")
    parser.add_argument("--chat-template", help="Jinja template file replacing the tokenizer's")
    add_input_arguments(parser)


def report_config(args: argparse.Namespace) -> tuple[ReportConfig, ReadOptions]:
    """Flags override the run config, which overrides ReportConfig's defaults (and data.format --format's)."""
    values, data_format = {}, "auto"
    if args.config:  # the same mapping pack uses, so report and pack judge the same rows
        from pipeline.config import load_config
        from pipeline.pack import PackConfig

        config = load_config(args.config)
        packing, data_format = PackConfig.from_run_config(config), config.data.format
        values = {k: getattr(packing, k) for k in ("tokenizer", "max_length", "chat_template", "train_on", "turns",
                                                     "reasoning", "truncation")}
    flags = {"tokenizer": args.tokenizer, "max_length": args.max_length, "chat_template": args.chat_template}
    values.update({k: v for k, v in flags.items() if v is not None})
    return ReportConfig(**values), read_options(args, data_format)


def main(args: argparse.Namespace) -> int:
    report = run(args.inputs, args.out, *report_config(args))
    for finding in report["findings"][:5]:
        print(f"  {finding['kind']}: {finding['count']} ({finding['share']:.1%}) {finding['message']}")
    print(f"wrote {report['html']} and {report['json']}")
    return 0
