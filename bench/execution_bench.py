"""The execution layer against its floors: whole `sftpack pack` and `sftpack validate` processes,
side by side with the 2-core preparation floor and, optionally, an earlier source tree.

    .venv/bin/python bench/execution_bench.py --rounds 3 [--base /tmp/basepkg2] [--out bench/EXECUTION.md]

- floor, 2 cores: bench/floor.py (one template render + the Rust tokenizer's encode_batch per
  conversation) with TOKENIZERS_PARALLELISM=true, so encode_batch uses both cores.
- pack: `sftpack pack x10.jsonl --max-length 1024` with default options (workers: the available cores).
- validate: `sftpack validate af10.jsonl --allow-rejects` (alpaca + fastchat, 10 times), lines/s.
- start-up: both on the first 20 lines.
`--base DIR`: a folder holding an earlier tree as an importable `sftpack` package (pipeline/ copied
to DIR/sftpack, stages/ to DIR/sftpack/cli, schemas/ to DIR/sftpack/schemas), run as
`python -m sftpack` with PYTHONPATH=DIR. Rounds alternate the commands, so load hits all alike.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from common import MODEL, PY, ROOT, SFTPACK, WORK, machine, make_inputs, median, real_lines, run_measured


def _inputs() -> dict[str, Path]:
    x10 = make_inputs("x10", 10)
    af10 = WORK / "af10.jsonl"
    lines = [line for stem in ("alpaca_en_demo", "fastchat_dummy_conversation") for line in real_lines(stem)
             if line.strip()]
    af10.write_text("\n".join(lines * 10) + "\n", encoding="utf-8")
    af100 = WORK / "af100.jsonl"
    af100.write_text(af10.read_text(encoding="utf-8") * 10, encoding="utf-8")
    first20 = WORK / "first20.jsonl"
    first20.write_text("\n".join(x10.read_text(encoding="utf-8").splitlines()[:20]) + "\n", encoding="utf-8")
    return {"x10": x10, "af10": af10, "af100": af100, "first20": first20}


def _commands(inputs: dict[str, Path], base: Path | None, out: Path) -> dict[str, list[str]]:
    tok = ["--tokenizer", str(MODEL)]
    floor = ["env", "TOKENIZERS_PARALLELISM=true", PY, str(ROOT / "bench" / "floor.py")]
    commands = {
        "floor_2core": floor + [str(inputs["x10"]), *tok],
        "pack": [SFTPACK, "pack", str(inputs["x10"]), *tok, "--max-length", "1024", "--out-dir", str(out / "pack")],
        "validate": [SFTPACK, "validate", str(inputs["af10"]), "--out-dir", str(out / "validate"), "--allow-rejects"],
        "validate_100": [SFTPACK, "validate", str(inputs["af100"]), "--out-dir", str(out / "validate_100"),
                         "--allow-rejects"],
        "floor_2core_20": floor + [str(inputs["first20"]), *tok],
        "pack_20": [SFTPACK, "pack", str(inputs["first20"]), *tok, "--out-dir", str(out / "pack20")],
    }
    if base is not None:
        old = ["env", f"PYTHONPATH={base}", PY, "-m", "sftpack"]
        commands["pack_base"] = old + commands["pack"][1:-1] + [str(out / "pack_base")]
        commands["validate_base"] = old + commands["validate"][1:-2] + [str(out / "validate_base"), "--allow-rejects"]
        commands["validate_100_base"] = old + commands["validate_100"][1:-2] + [str(out / "validate_100_base"),
                                                                                  "--allow-rejects"]
        commands["pack_20_base"] = old + commands["pack_20"][1:-1] + [str(out / "pack20_base")]
    return commands


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "EXECUTION.md")
    args = parser.parse_args()
    inputs = _inputs()
    scratch = WORK / "execution"
    commands = _commands(inputs, args.base, scratch)
    runs: dict[str, list] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            shutil.rmtree(scratch, ignore_errors=True)  # every pack builds, never reuses
            scratch.mkdir(parents=True)
            runs[name].append(run_measured(cmd))
    wall = {name: median([r.wall_s for r in done]) for name, done in runs.items()}
    cpu = {name: median([r.cpu_s for r in done]) for name, done in runs.items()}
    lines = sum(1 for _ in open(inputs["af10"], encoding="utf-8"))
    lines100 = 10 * lines
    loads = [r.load_before for done in runs.values() for r in done]
    report = [
        "# Execution layer: pack and validate against their floors",
        "",
        f"Written by `.venv/bin/python bench/execution_bench.py --rounds {args.rounds}"
        f"{' --base ' + str(args.base) if args.base else ''}`. Whole processes, medians of {args.rounds} "
        f"alternated rounds; machine: {machine()['cpu']}, {machine()['nproc']} cores; 1-min load before the runs "
        f"{min(loads):.2f} to {max(loads):.2f}.",
        "",
        "| command | wall s (median) | runs | CPU s (median) |",
        "| --- | --- | --- | --- |",
    ]
    for name, cmd in commands.items():
        shown = " ".join(str(c) for c in cmd).replace(str(ROOT) + "/", "").replace(str(WORK), "bench/work")
        report.append(f"| {name}: `{shown}` | {wall[name]:.2f} | "
                      f"{', '.join(f'{r.wall_s:.2f}' for r in runs[name])} | {cpu[name]:.2f} |")
    report += [
        "",
        f"- pack / 2-core floor (x10.jsonl, whole processes): **{wall['pack'] / wall['floor_2core']:.2f}x**"
        + (f" (the earlier tree: {wall['pack_base'] / wall['floor_2core']:.2f}x)" if "pack_base" in wall else ""),
        f"- validate: **{lines / wall['validate']:,.0f} lines/s** whole command on af10.jsonl ({lines:,} lines)"
        + (f" (the earlier tree: {lines / wall['validate_base']:,.0f})" if "validate_base" in wall else ""),
        f"- validate: **{lines100 / wall['validate_100']:,.0f} lines/s** whole command on af100.jsonl ({lines100:,} "
        f"lines)" + (f" (the earlier tree: {lines100 / wall['validate_100_base']:,.0f}, "
                     f"{wall['validate_100_base'] / wall['validate_100']:.2f}x the time)" if "validate_100_base" in wall else ""),
        f"- start-up, 20 lines: pack {wall['pack_20']:.2f} s, floor {wall['floor_2core_20']:.2f} s"
        + (f" (the earlier tree: {wall['pack_20_base']:.2f} s)" if "pack_20_base" in wall else ""),
    ]
    args.out.write_text("\n".join(report) + "\n", encoding="utf-8")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
