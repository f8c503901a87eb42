"""Run every benchmark side by side on this machine and write bench/RESULTS.md (`make bench`).

    .venv/bin/python bench/run_all.py            # full: a few million tokens, ~15-20 min on 2 cores
    .venv/bin/python bench/run_all.py --quick    # tiny inputs, one round: checks the harness (~1 min)

Inputs are the real datasets in tests/data/real/ repeated into bench/work/ (git-ignored).
Whole processes are timed from outside (wall clock, peak RSS summed over the process tree,
polled every 20 ms); competing commands alternate round by round and medians are reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (BENCH_ENV, MODEL, PY, ROOT, SFTPACK, WORK, machine, make_inputs, median,  # noqa: E402
                    run_measured, short, versions)

NOTES = ROOT / "bench" / "NOTES.md"
"""Hand-written: the profile, what was tried and what each change gained (appended verbatim)."""

SECTIONS = ("## Machine and versions", "## Commands", "## Preparation", "## Packing efficiency", "## Reuse",
            "## Memory", "## Training throughput", "## Scaling", "## Goals")


def tokenizer_arg() -> list[str]:
    return ["--tokenizer", str(MODEL)]


def pack_cmd(inp: Path, out: Path, max_length: int, num_proc: int = 1) -> list[str]:
    return [SFTPACK, "pack", str(inp), *tokenizer_arg(), "--max-length", str(max_length), "--out-dir", str(out),
            "--num-proc", str(num_proc)]


def pack_summary(run) -> dict:
    """Parse pack's summary line ('packed in ...: a/b examples -> R rows ... T tokens ...')."""
    lines = run.stdout.strip().splitlines()
    return {"reused": lines[-2].startswith("reused"), "folder": lines[-1], "summary": lines[-2]}


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny inputs, one round (harness check)")
    parser.add_argument("--rounds", type=int, help="alternated rounds for preparation (default 3; quick 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["trl", "np2", "train"],
                        help="leave out TRL's preparation, the --num-proc 2 runs or training (sections say so)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"), help="where to write the results")
    args = parser.parse_args()
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    max_length = 1024
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)

    # ------------------------------------------------------------ inputs
    per_file = 40 if quick else None
    big_x = 2 if quick else 10
    small = make_inputs("x1", 1, per_file)
    big = make_inputs(f"x{big_x}", big_x, per_file)
    train_in = small if quick else make_inputs("train", 1, 64)
    counts = {p.name: sum(1 for _ in open(p, "rb")) for p in (small, big, train_in)}
    commands: list[tuple[str, list[str]]] = []
    log = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731

    # ------------------------------------------------------------ preparation + scaling (alternated)
    prep = {"pack": [], "pack_np2": [], "pack_1core": [], "trl": [], "floor": []}
    cmds = {
        "pack": lambda r: pack_cmd(big, WORK / f"prep{r}", max_length, 1),
        "pack_np2": lambda r: pack_cmd(big, WORK / f"np2_{r}", max_length, 2),
        # one process held to one core: the baseline --num-proc 2 is compared with
        "pack_1core": lambda r: ["taskset", "-c", "0", *pack_cmd(big, WORK / f"core1_{r}", max_length, 1)],
        "trl": lambda r: [PY, "bench/trl_prepare.py", str(big), *tokenizer_arg(), "--max-length", str(max_length)],
        "floor": lambda r: [PY, "bench/floor.py", str(big), *tokenizer_arg()],
    }
    skip = set(args.skip)
    order = [name for name in cmds
             if not (name == "trl" and "trl" in skip or name in ("pack_np2", "pack_1core") and "np2" in skip)]
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:  # rotate who goes first
            log(f"round {r + 1}/{rounds}: {name}")
            prep[name].append(run_measured(cmds[name](r)))
            shutil.rmtree(WORK / f"np2_{r}", ignore_errors=True)
            shutil.rmtree(WORK / f"core1_{r}", ignore_errors=True)
    for name in order:
        commands.append((f"preparation: {name}", prep[name][0].cmd))
    prep = {k: v for k, v in prep.items() if v}
    wall = {k: median(x.wall_s for x in v) for k, v in prep.items()}
    rss = {k: median(x.peak_rss_mib for x in v) for k, v in prep.items()}
    trl_out = prep["trl"][0].json_tail() if "trl" in prep else {"tokens": 0}
    floor_out = prep["floor"][0].json_tail()
    pack_manifest = json.loads((Path(pack_summary(prep["pack"][-1])["folder"]) / "manifest.json").read_text())
    totals = pack_manifest["totals"]

    # ------------------------------------------------------------ reuse
    folder_parent = WORK / f"prep{rounds - 1}"
    reuse_runs = []
    for _ in range(1 if quick else 3):
        log("reuse: unchanged inputs")
        reuse_runs.append(run_measured(pack_cmd(big, folder_parent, max_length, 1)))
    reused_ok = all(pack_summary(r)["reused"] for r in reuse_runs)
    commands.append(("reuse: the same command again", reuse_runs[0].cmd))
    edited = WORK / f"{big.stem}-edited.jsonl"
    lines = big.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[len(lines) // 2])
    record["messages"][-1]["content"] = str(record["messages"][-1].get("content") or "") + " (edited)"
    lines[len(lines) // 2] = json.dumps(record, ensure_ascii=False) + "\n"
    # Same file name in its own folder, so only the content differs.
    (WORK / "edited").mkdir(exist_ok=True)
    edited = WORK / "edited" / big.name
    edited.write_text("".join(lines), encoding="utf-8")
    log("reuse: one line changed")
    edit_run = run_measured(pack_cmd(edited, folder_parent, max_length, 1))
    edit_info = pack_summary(edit_run)
    commands.append(("reuse: one line changed (same name, other folder)", edit_run.cmd))
    for r in range(rounds):
        shutil.rmtree(WORK / f"prep{r}", ignore_errors=True)

    # ------------------------------------------------------------ start-up
    help_runs = [run_measured([SFTPACK, "--help"]) for _ in range(3)]
    commands.append(("start-up: the command's help", help_runs[0].cmd))

    # ------------------------------------------------------------ memory (1x and 100x; the 10x runs are the prep runs)
    mem_small = []
    for r in range(1 if quick else 3):
        log("memory: 1x")
        mem_small.append(run_measured(pack_cmd(small, WORK / f"mem{r}", max_length, 1)))
        shutil.rmtree(WORK / f"mem{r}", ignore_errors=True)
    commands.append(("memory: pack on 1x", mem_small[0].cmd))
    huge = make_inputs(f"x{big_x * 10}", big_x * 10, per_file)
    counts[huge.name] = sum(1 for _ in open(huge, "rb"))
    log(f"memory: {big_x * 10}x")
    mem_huge = run_measured(pack_cmd(huge, WORK / "mem_huge", max_length, 1))
    shutil.rmtree(WORK / "mem_huge", ignore_errors=True)
    huge.unlink()
    commands.append((f"memory: pack on {big_x * 10}x", mem_huge.cmd))

    # ------------------------------------------------------------ packing efficiency
    log("packing efficiency")
    eff_cmd = [PY, "bench/packing_efficiency.py", str(small), "--lengths-from", str(big), *tokenizer_arg(),
               "--out-dir", str(WORK / "eff")]
    eff = run_measured(eff_cmd).json_tail()
    commands.append(("packing efficiency", eff_cmd))

    # ------------------------------------------------------------ training throughput
    train = None
    if "train" not in skip:
        train, train_pack, train_cmd = training(train_in, max_length, quick, log)
        commands.append(("training: pack the training subset", train_pack.cmd))
        commands.append(("training throughput", train_cmd))

    write_report(args.out, quick, rounds, max_length, small, big, big_x, train_in, counts, commands, prep, wall, rss,
                 trl_out, floor_out, totals, reuse_runs, reused_ok, edit_run, edit_info, mem_small, eff, train,
                 skip, help_runs, mem_huge, huge)
    log(f"wrote {args.out}")


def training(train_in, max_length, quick, log):
    log("training throughput")
    train_pack = run_measured(pack_cmd(train_in, WORK / "train_packed", max_length, 1))
    train_folder = pack_summary(train_pack)["folder"]
    train_cmd = [PY, "bench/train_throughput.py", "--packed", train_folder, "--raw", str(train_in),
                 *tokenizer_arg(), "--max-length", str(max_length)]
    train_cmd += (["--steps", "3", "--warmup", "1", "--rounds", "1", "--hidden", "64", "--layers", "1",
                   "--packed-batch", "1", "--padded-batch", "4"] if quick else
                  ["--steps", "4", "--warmup", "1", "--rounds", "1", "--hidden", "64", "--layers", "2",
                   "--packed-batch", "1", "--padded-batch", "4"])
    return run_measured(train_cmd).json_tail(), train_pack, train_cmd


def write_report(out, quick, rounds, max_length, small, big, big_x, train_in, counts, commands, prep, wall, rss,
                 trl_out, floor_out, totals, reuse_runs, reused_ok, edit_run, edit_info, mem_small, eff, train,
                 skip, help_runs, mem_huge, huge) -> None:
    """Write RESULTS.md: every section always present; a skipped measurement says so."""
    order = list(prep)
    rss_small = median(x.peak_rss_mib for x in mem_small)
    goals = []

    def goal(name: str, met: bool, detail: str) -> None:
        goals.append(f"| {name} | {detail} | {'**met**' if met else '**not met**'} |")

    md: list[str] = []
    w = md.append
    w("# sftpack benchmarks")
    w("")
    w(f"Written by `bench/run_all.py{' --quick' if quick else ''}` on "
      f"{dt.datetime.now().isoformat(timespec='seconds')}. "
      + ("**Quick mode: tiny inputs, one round; the numbers check the harness, not the goals.**" if quick else
         "Medians over alternated rounds; every number below comes from this one run."))
    w("")
    w("## Machine and versions")
    w("")
    for k, v in machine().items():
        w(f"- {k}: {v}")
    w(f"- load average (1 min) around the preparation runs: "
      f"{min(x.load_before for v in prep.values() for x in v):.2f} to "
      f"{max(x.load_after for v in prep.values() for x in v):.2f} "
      f"(the 2 cores are shared with other work; more than ~1 means the runs competed for CPU)")
    w("- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    w("- environment of every measured process: " + " ".join(f"{k}={v}" for k, v in BENCH_ENV.items()))
    w("")
    w("## Commands")
    w("")
    w(f"Inputs: `{small.relative_to(ROOT)}` ({counts[small.name]:,} lines: the three real files "
      f"{'(first 40 lines of each) ' if quick else ''}once), `{big.relative_to(ROOT)}` "
      f"({counts[big.name]:,} lines: {big_x} repeats, ids made distinct), `{train_in.relative_to(ROOT)}` "
      f"({counts[train_in.name]:,} lines). Made by `bench/common.py:make_inputs` from tests/data/real/.")
    w("")
    w("```")
    for label, cmd in commands:
        w(f"# {label}")
        w(short(cmd))
    w("```")
    w("")

    w("## Preparation")
    w("")
    w(f"`{big.name}`: {totals['examples_read']:,} examples, {totals['tokens']:,} tokens packed by sftpack "
      f"({totals['trained_tokens']:,} trained, responses only), {floor_out['tokens']:,} tokens rendered by the "
      f"floor, {trl_out['tokens']:,} by TRL (long examples truncated, not dropped; every token trained: "
      f"SmolLM2's template has no generation tags, so TRL's assistant_only_loss cannot be used). "
      f"max_length {max_length}. {rounds} alternated round(s); whole processes, start-up included.")
    w("")
    w("| command | wall s (median) | runs | CPU s (median) | peak RSS MiB | inner s (median) | tokens/s (whole process) |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    labels = {"pack": "sftpack pack --num-proc 1 (masks + packing + shards)",
              "pack_np2": "sftpack pack --num-proc 2",
              "pack_1core": "sftpack pack --num-proc 1, held to one core (taskset -c 0)",
              "trl": "TRL SFTTrainer preparation (tokenize + bfd)", "floor": "floor: render + batched tokenize"}
    inner_s = {"trl": median(x.json_tail()["prepare_s"] + x.json_tail()["load_s"] for x in prep.get("trl", [])) if "trl" in prep else 0,
               "floor": median(x.json_tail()["encode_s"] for x in prep["floor"])}
    for name in order:
        runs = ", ".join(fmt(x.wall_s, 1) for x in prep[name])
        inner_txt = fmt(inner_s[name], 2) if name in inner_s else "see manifest"
        cpu = median(x.cpu_s for x in prep[name])
        w(f"| {labels[name]} | {fmt(wall[name])} | {runs} | {fmt(cpu, 1)} | {fmt(rss[name], 0)} | {inner_txt} | "
          f"{fmt(totals['tokens'] / wall[name], 0)} |")
    w("")
    w("CPU s: user + system seconds of the whole process tree. pack encodes on two threads by default "
      "(PackConfig.threads: the Rust tokenizer releases the GIL, so it tokenizes one batch while the next is "
      "templated), so its wall time can be below its CPU time; TRL and the floor run on one core "
      "(TOKENIZERS_PARALLELISM=false for every process).")
    w("")
    vs_floor = wall["pack"] / wall["floor"]
    if "trl" in wall:
        vs_trl = wall["trl"] / wall["pack"]
        w(f"pack is **{vs_trl:.2f}x** faster than TRL's preparation and takes **{vs_floor:.2f}x** the floor's "
          f"time (whole processes).")
        cpu_pack, cpu_trl = (median(x.cpu_s for x in prep[k]) for k in ("pack", "trl"))
        w(f"By CPU time: pack {cpu_pack:.1f} s, TRL {cpu_trl:.1f} s: **{cpu_trl / cpu_pack:.2f}x** less CPU.")
        goal("pack >= 2x faster than TRL preparation", vs_trl >= 2, f"{vs_trl:.2f}x")
    else:
        w(f"TRL's preparation: skipped (--skip trl). pack takes **{vs_floor:.2f}x** the floor's time.")
        goal("pack >= 2x faster than TRL preparation", False, "skipped")
    goal("pack within 1.5x of the tokenization floor", vs_floor <= 1.5, f"{vs_floor:.2f}x")
    if "pack_1core" in wall:
        one_core = wall["pack_1core"] / wall["floor"]
        w(f"Held to one core, as the floor runs, pack takes **{one_core:.2f}x** the floor's time.")
        goal("pack within 1.5x of the floor on one core", one_core <= 1.5, f"{one_core:.2f}x")
    w("")

    w("## Packing efficiency")
    w("")
    w("Rows needed (fewer is better); efficiency = tokens / (rows x max_length). *Real*: `sftpack.packing.stage.run` "
      f"on `{small.name}` and TRL's `pack_dataset(strategy='bfd')` (as SFTTrainer calls it: Dataset.map in "
      f"batches of 1000) on sequences of exactly the lengths pack kept. *Lengths*: the two algorithms on every "
      f"sequence of `{big.name}` that fits.")
    w("")
    w("*Lower bound* is ceil(tokens / max_length); *L2* is the Martello-Toth bound, which no packing can "
      "beat (items longer than half a row cannot share one), so rows equal to L2 are optimal.")
    w("")
    w("| data | max_length | sequences | tokens | lower bound | L2 | sftpack rows | TRL bfd rows | sftpack eff. | "
      "TRL eff. | sftpack over bound | over L2 |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    worst_over, worst_over_l2, never_below = 0.0, 0.0, True
    for kind, label in (("small", f"real, {small.name}"), ("big", f"lengths, {big.name}")):
        for row in eff[kind]:
            cap = row["max_length"]
            over = row["pack_rows"] / row["bound"] - 1
            over_l2 = row["pack_rows"] / row["l2"] - 1
            worst_over, worst_over_l2 = max(worst_over, over), max(worst_over_l2, over_l2)
            never_below &= row["pack_rows"] <= row["trl_rows"]
            w(f"| {label} | {cap} | {row['examples']:,} | {row['tokens']:,} | {row['bound']:,} | {row['l2']:,} | "
              f"{row['pack_rows']:,} | {row['trl_rows']:,} | {row['tokens'] / (row['pack_rows'] * cap):.2%} | "
              f"{row['tokens'] / (row['trl_rows'] * cap):.2%} | {over:+.2%} | {over_l2:+.2%} |")
    w("")
    goal("packing never below TRL's bfd", never_below, "rows <= TRL's in every case" if never_below else
         "more rows than TRL somewhere")
    goal("packing within 0.5% of ceil(tokens/max_length)", worst_over <= 0.005,
         f"worst {worst_over:+.2%} rows over ceil, {worst_over_l2:+.2%} over the L2 bound (the true floor)")

    w("## Reuse")
    w("")
    reuse_s = median(x.wall_s for x in reuse_runs)
    share = reuse_s / wall["pack"]
    w("| run | wall s | result |")
    w("| --- | --- | --- |")
    w(f"| first pack (cold, median of the preparation runs) | {fmt(wall['pack'])} | built |")
    w(f"| same command again (median of {len(reuse_runs)}) | {fmt(reuse_s)} | "
      f"{'reused, checksums verified' if reused_ok else 'REBUILT'} |")
    w(f"| one line changed | {fmt(edit_run.wall_s)} | {'REUSED (wrong)' if edit_info['reused'] else 'rebuilt'} "
      f"into a new folder `{Path(edit_info['folder']).name}` |")
    help_s = median(x.wall_s for x in help_runs)
    w(f"| `sftpack --help` (median of {len(help_runs)}) | {fmt(help_s)} | start-up alone |")
    w("")
    w(f"The second run costs {share:.1%} of the first.")
    w("")
    goal("reuse under 10% of the first run", share < 0.10 and reused_ok, f"{share:.1%}")
    goal("a reused pack under 0.5 s", reuse_s < 0.5 and reused_ok, f"{reuse_s:.2f} s")
    goal("`sftpack --help` under 0.5 s", help_s < 0.5, f"{help_s:.2f} s")
    goal("a one-line change rebuilds", not edit_info["reused"], "rebuilt" if not edit_info["reused"] else "reused")

    w("## Memory")
    w("")
    ratio = rss["pack"] / rss_small
    w("Peak RSS summed over the process tree (workers included), whole `sftpack pack` processes, "
      "median of the runs.")
    w("")
    w("| input | lines | peak RSS MiB | runs |")
    w("| --- | --- | --- | --- |")
    w(f"| {small.name} | {counts[small.name]:,} | {fmt(rss_small, 0)} | "
      f"{', '.join(fmt(x.peak_rss_mib, 0) for x in mem_small)} |")
    w(f"| {big.name} | {counts[big.name]:,} | {fmt(rss['pack'], 0)} | "
      f"{', '.join(fmt(x.peak_rss_mib, 0) for x in prep['pack'])} |")
    if "pack_np2" in prep:
        w(f"| {big.name}, --num-proc 2 | {counts[big.name]:,} | {fmt(rss['pack_np2'], 0)} | "
          f"{', '.join(fmt(x.peak_rss_mib, 0) for x in prep['pack_np2'])} |")
    w(f"| {huge.name} | {counts[huge.name]:,} | {fmt(mem_huge.peak_rss_mib, 0)} | 1 run |")
    w("")
    huge_ratio = mem_huge.peak_rss_mib / rss["pack"]
    w(f"{big_x}x the data takes {ratio:.2f}x the memory; {big_x * 10}x takes {huge_ratio:.2f}x what {big_x}x takes.")
    w("")
    goal(f"{big_x}x data < 1.5x memory ({big.name} -> {huge.name})", huge_ratio < 1.5, f"{huge_ratio:.2f}x")

    w("## Training throughput")
    w("")
    if train is None:
        w("Skipped (--skip train).")
        w("")
        goal("training >= 1.5x trained tokens/s (packed vs padded)", False, "skipped")
    else:
        w(f"Same {train['examples']} examples (`{train_in.name}`, those pack kept at max_length {max_length}); "
          f"a small Llama from config with the SmolLM2 tokenizer, CPU. Packed: {train['packed_rows']} padding-free "
          f"rows via SFTTrainer(skip_prepare_dataset, padding_free=True). Padded: SFTTrainer(packing=False) on the "
          f"raw messages, TRL's default collator. Medians of alternated runs; tokens counted from the batches "
          f"the loss sees, first steps untimed.")
        w("")
        w("| side | trained tok/s (labels != -100) | real tok/s (not padding) | padding share | trained/step | "
          "real/step |")
        w("| --- | --- | --- | --- | --- | --- |")
        for side in ("padded", "packed"):
            s = train[side]
            w(f"| {side} | {fmt(s['trained_tok_s'], 0)} | {fmt(s['real_tok_s'], 0)} | {s['padding_share']:.1%} | "
              f"{fmt(s['trained_per_step'], 0)} | {fmt(s['real_per_step'], 0)} |")
        w("")
        w(f"Packed/padded: **{train['speedup_trained']:.2f}x** trained tokens per second, "
          f"**{train['speedup_real']:.2f}x** real tokens per second. The padded side trains on prompts too "
          f"(no generation tags), so its trained tokens are all its real tokens; the packed side trains on "
          f"responses only, which lowers its trained-token count by design.")
        w("")
        w("Per run: " + "; ".join(f"{r['side']} {fmt(r['trained_tok_s'], 0)} trained tok/s over {r['seconds']} s"
                                  for r in train["runs"]))
        w("")
        goal("training >= 1.5x trained tokens/s (packed vs padded)", train["speedup_trained"] >= 1.5,
             f"{train['speedup_trained']:.2f}x trained, {train['speedup_real']:.2f}x real tokens/s")

    w("## Scaling")
    w("")
    w("| run | wall s (median) | runs | CPU s | speed-up over one process on one core |")
    w("| --- | --- | --- | --- | --- |")
    if "pack_np2" in prep:
        base = wall["pack_1core"]
        for name, label in (("pack_1core", "--num-proc 1 on one core (taskset -c 0)"),
                            ("pack", "--num-proc 1 (default: encoding on 2 threads)"), ("pack_np2", "--num-proc 2")):
            w(f"| {label} | {fmt(wall[name])} | {', '.join(fmt(x.wall_s, 1) for x in prep[name])} | "
              f"{fmt(median(x.cpu_s for x in prep[name]), 1)} | {base / wall[name]:.2f}x |")
        goal("--num-proc 2 > 1.5x one process on one core", base / wall["pack_np2"] > 1.5,
             f"{base / wall['pack_np2']:.2f}x ({wall['pack'] / wall['pack_np2']:.2f}x the default 2-thread process)")
    else:
        w("| --num-proc 2 | skipped (--skip np2) | | | |")
    w("")
    w(f"On {os.cpu_count()} cores shared with other work; alternated with the preparation runs. The default "
      "process already overlaps templating and the Rust tokenizer on two threads, so a second process adds "
      "less over it than over a process held to one core.")
    w("")

    w("## Goals")
    w("")
    w("| goal | measured | verdict |")
    w("| --- | --- | --- |")
    md.extend(goals)
    w("")
    if NOTES.is_file():
        w(NOTES.read_text(encoding="utf-8").rstrip())
        w("")
    Path(out).write_text("\n".join(md), encoding="utf-8")


if __name__ == "__main__":
    main()
