"""`sftpack mix`: one recipe turns many sources into one clean, decontaminated, weighted training set."""

from __future__ import annotations

import argparse

from sftpack import api


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (README \"Mixtures\"; schemas/recipe.schema.json)")
    parser.add_argument("--out-dir", required=True, help="parent of the <fingerprint>/ folder")
    parser.add_argument("--ray", metavar="ADDRESS", help="decontamination lookups, MinHash signatures and near-duplicate "
                        "pairs on a Ray cluster: local, auto, HOST:PORT or ray://HOST:PORT (the same files; --out-dir shared)")


def main(args: argparse.Namespace) -> int:
    manifest = api.mix(args.recipe, args.out_dir, ray=args.ray)
    verb = "reused (checksums verified)" if manifest["reused"] else f"mixed in {manifest['seconds']:.1f}s"
    t = manifest["totals"]
    print(f"{verb}: {t['in']} read -> {t['out']} training examples ({t['sampled']} distinct, {t['repeated']} repeats), "
          f"{t['held_out']} held out for eval")
    for name, s in manifest["sources"].items():
        removed = ", ".join(f"{k}={v}" for k, v in s["removed"].items()) or "none"
        tokens = f", {s['tokens']:,} tokens" if "tokens" in s else ""
        print(f"  {name}: in {s['in']}, eval {s['held_out']}, out {s['out']}{tokens}; removed: {removed}")
    print(manifest["path"])
    return 0
