"""`sftpack pack`: check, template, mask and pack conversations (any container, any layout) into a reusable shard folder."""

from __future__ import annotations

import argparse
import sys

from sftpack import api
from sftpack.packing.stage import drop_hints, pack_warnings
from sftpack.cli.data_options import add_data_arguments, data_flags
from sftpack.cli.input_options import add_input_arguments, read_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="conversations as validate reads them: JSONL (.gz, .zst), Parquet, a mix folder or recipe, "
                                                  "folders, globs or dataset names (usually validate's output)")
    parser.add_argument("--out-dir", required=True, help="parent of the <fingerprint>/ folder")
    parser.add_argument("--config", help="run config YAML: model.name_or_path and data.* give the defaults")
    parser.add_argument("--allow-rejects", action="store_true", default=None,
                        help="pack the rest when records fail validate's checks (default: data.allow_rejects of "
                             "--config, else false: stop, naming them)")
    parser.add_argument("--num-proc", type=int, default=1,
                        help="encoding processes (default 1); the output is the same for any value")
    parser.add_argument("--ray", metavar="ADDRESS", help="encode and write on a Ray cluster: local, auto, HOST:PORT "
                                                         "or ray://HOST:PORT (same output; README \"More than one machine\")")
    add_data_arguments(parser)
    add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    flags = data_flags(args) | {"num_proc": args.num_proc, "ray": args.ray, "allow_rejects": args.allow_rejects}
    folder = api.pack(args.inputs, args.out_dir, config=args.config, **flags, **read_arguments(args))
    manifest = folder.manifest
    t = manifest["totals"]
    verb = "reused (checksums verified)" if manifest["reused"] else f"packed in {manifest['seconds']:.1f}s"
    over = f" over {manifest['options']['max_length']}"  # too_long=28 over 1024: the limit they were over
    dropped = ", ".join(f"{k}={v}{over if k == 'too_long' else ''}" for k, v in t["dropped"].items()) or "none"
    print(f"{verb}: {t['examples_packed']}/{t['examples_read']} examples -> {t['rows']} rows "
          f"(lower bound {t['lower_bound_rows']}), {t['tokens']:,} tokens, {t['trained_tokens']:,} trained "
          f"({t['trained_share']:.1%}), packing efficiency {t['packing_efficiency']:.2%}, "
          f"truncated {t['truncated']}, assistant text not trained "
          f"{t.get('audit', {}).get('assistant_text_not_trained', 0)}, dropped: {dropped}")
    audit = t.get("audit", {})
    if audit.get("split_conversations"):
        print(f"split: {audit['split_conversations']} conversations into {t['sequences_packed']} sequences in all, "
              f"{audit['split_extra_tokens']:,} extra tokens (--turns auto: every turn trained as the model writes it)")
    if audit.get("turns_marked_untrained"):
        print(f"untrained: {audit['turns_marked_untrained']} assistant turns marked \"train\": false")
    for warning in pack_warnings(manifest) + drop_hints(manifest):
        print(f"warning: {warning}", file=sys.stderr)
    rejected = sum(v for k, v in t["dropped"].items() if k.startswith("rejected_"))
    if rejected:  # pack never trains on what validate rejects; say where to look
        first = next((d for d in manifest["first_drops"] if d["reason"].startswith("rejected_")), None)
        where = f" (first: {first['input']}:{first['line']} [{first['rule']}] {first['message']})" if first else ""
        print(f"warning: {rejected} examples failed validate's checks and were left out{where}; "
              "`sftpack validate` lists them all", file=sys.stderr)
    print(manifest["path"])
    return 0
