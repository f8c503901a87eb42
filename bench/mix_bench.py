"""`sftpack mix` measured: near-duplicate quality, decontamination recall, throughput and memory.

    .venv/bin/python bench/mix_bench.py          # writes bench/MIX.md (inputs under bench/work/)

1. Near duplicates. Distinct real conversations (tests/data/real, >= 30 words) get a variant each,
   made by word deletions, insertions and swaps in the answers until the exact Jaccard of the two
   word-3-gram sets falls to a target (0.5 to 0.95). The originals and the variants are mixed with
   `near: {threshold: 0.8}`: recall is the share of variants at or above 0.8 removed as near
   duplicates of their original; with exact dedup only, none is. False merges: the distinct
   originals mixed alone; a merge is a false one when the pair's exact Jaccard is below 0.8.
2. Decontamination. 300 alpaca prompts (>= 15 words) are the benchmark; 100 each are planted into
   fastchat/glaive conversations verbatim, embedded in a longer prompt, and upper-cased with their
   punctuation changed. Recall: planted records removed. False positives: the clean fastchat and
   glaive conversations removed against the same (unrelated) items. Again on templated data: every
   conversation with one system prompt and a signature under every answer, 5% of each source held
   out, two more items holding that system prompt and signature; removals as eval near copies are
   counted apart.
3. Throughput. Whole `sftpack mix` processes (near dedup + decontamination) on bench/work/x10.jsonl
   and x100.jsonl (the real files repeated, as pack's bench), and on 100k distinct-text
   conversations (each repeat's first prompt suffixed): conversations/s and peak RSS; then
   `sftpack pack` on x10 and x100 for comparison. `--ray`: local and `--ray local` side by side
   (bench/MIX_RAY.md).
"""

from __future__ import annotations

import json
import os
from collections import Counter
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, REAL_FILES, ROOT, SFTPACK, WORK, machine, make_inputs, real_lines, run_measured  # noqa: E402

from sftpack.checks.conversation_key import conversation_key  # noqa: E402
from sftpack.mixing.text import dialogue_text, shingles, turn_text, words  # noqa: E402

THRESHOLD, NGRAM = 0.8, 3
TARGETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def dialogue_jaccard(a: dict, b: dict) -> float:
    sa, sb = (set(shingles(words(dialogue_text(r)), NGRAM)) for r in (a, b))
    return len(sa & sb) / len(sa | sb)


def jaccard(a: dict, b: dict) -> float:
    sa, sb = (set(shingles(words(turn_text(r)), NGRAM)) for r in (a, b))
    return len(sa & sb) / len(sa | sb)


def distinct_records() -> list[dict]:
    seen, out = set(), []
    for stem in REAL_FILES:
        for line in real_lines(stem):
            record = json.loads(line)
            key = conversation_key(record)
            if key not in seen and len(words(turn_text(record))) >= 30:
                seen.add(key)
                out.append(record)
    return out


def variant(record: dict, target: float, rng: random.Random) -> tuple[dict, float]:
    out = json.loads(json.dumps(record))
    answers = [m for m in out["messages"] if m["role"] == "assistant" and m.get("content")]
    for _ in range(2000):
        message = rng.choice(answers)
        ws = message["content"].split()
        i = rng.randrange(max(1, len(ws)))
        op = rng.choice("dis")
        if op == "d" and len(ws) > 2:
            ws.pop(i)
        elif op == "i":
            ws.insert(i, rng.choice(("really", "also", "then", "kindly", "indeed", "quite")))
        elif len(ws) > 1:
            j = min(len(ws) - 1, i + 1)
            ws[i], ws[j] = ws[j], ws[i]
        message["content"] = " ".join(ws)
        similarity = jaccard(record, out)
        if similarity <= target:
            return out, similarity
    return out, jaccard(record, out)


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def mix(name: str, recipe: dict) -> dict:
    import sftpack

    return sftpack.mix(recipe, WORK / "mix" / name)


def removed(manifest: dict) -> list[dict]:
    lines = Path(manifest["path"], "removed.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# ---------------------------------------------------------------- 1 near duplicates

def near_quality(rng: random.Random, num_perm: int = 128) -> list[str]:
    originals = rng.sample(distinct_records(), 700)
    pairs = [variant(r, TARGETS[i % len(TARGETS)], rng) for i, r in enumerate(originals)]
    orig, var = write(WORK / "near-orig.jsonl", originals), write(WORK / "near-var.jsonl", [v for v, _ in pairs])
    sources = [{"name": "orig", "path": str(orig)}, {"name": "var", "path": str(var)}]
    rows = ["| dedup | planted pairs >= 0.8 resolved | removed as a near duplicate of its own original | "
            "resolved, by exact Jaccard of the pair |", "| --- | ---: | ---: | --- |"]
    for label, dedup in (("exact only", {"exact": True}), (f"exact + near (0.8, {num_perm} perms)", {"near": {"threshold": THRESHOLD, "num_perm": num_perm}})):
        gone = removed(mix(f"near-{len(label)}", {"sources": sources, "dedup": dedup}))
        # A pair is resolved when at most one of the two is trained on: the variant removed, or the
        # original removed (near duplicate of an earlier original, whose keeper the variant may not match).
        own = {r["row"] for r in gone if r["source"] == "var" and r.get("kept") == f"orig:near-orig.jsonl:{r['row']}"}
        var_gone = {r["row"] for r in gone if r["source"] == "var"}
        orig_gone = {r["row"] for r in gone if r["source"] == "orig"}
        resolved = var_gone | orig_gone
        buckets = []
        for low, high in ((0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)):
            rows_in = [i + 1 for i, (_, j) in enumerate(pairs) if low <= j < high]
            buckets.append(f"[{low}, {min(high, 1.0)}): {sum(i in resolved for i in rows_in)}/{len(rows_in)}")
        planted = [i + 1 for i, (_, j) in enumerate(pairs) if j >= THRESHOLD]
        hit, mine = sum(i in resolved for i in planted), sum(i in own for i in planted)
        rows.append(f"| {label} | {hit}/{len(planted)} = {hit / len(planted):.3f} | {mine}/{len(planted)} | "
                    f"{'; '.join(buckets)} |")
    distinct = write(WORK / "near-distinct.jsonl", distinct_records())
    alone = mix("near-alone", {"sources": [{"name": "d", "path": str(distinct)}],
                               "dedup": {"near": {"threshold": THRESHOLD, "num_perm": num_perm}}})
    by_id = {f"d:near-distinct.jsonl:{i + 1}": r for i, r in enumerate(distinct_records())}
    merges = [r for r in removed(alone) if r["reason"] == "near_duplicate"]
    false = sorted(round(j, 3) for j in (jaccard(by_id[r["id"]], by_id[r["kept"]]) for r in merges) if j < THRESHOLD)
    total = alone["sources"]["d"]["in"]
    rows.append(f"\nDistinct real conversations mixed alone: {total}; merged as near duplicates: {len(merges)}; of "
                f"those below 0.8 exact Jaccard (false merges): {len(false)} = {len(false) / total:.2%} of all "
                f"(their exact Jaccard: {false}).")
    return rows


# ---------------------------------------------------------------- 2 decontamination

SYSTEM = ("You are Pip, a concise and friendly assistant made by the sftpack team. Answer every question "
          "carefully, and say so plainly when you do not know the answer.")
SIGNATURE = "Best regards, Pip, the friendly assistant made by the sftpack team, always here to help you out"


def templated(record: dict) -> dict:
    """A conversation as many SFT sets are: one system prompt on every row, a signature under every answer."""
    turns = [m | {"content": m["content"] + "\n\n" + SIGNATURE} if m["role"] == "assistant" and m.get("content") else m
             for m in record["messages"] if m["role"] != "system"]
    return {"messages": [{"role": "system", "content": SYSTEM}] + turns}


def decontamination(rng: random.Random, shaped: bool = False) -> list[str]:
    """Planted recall and false positives; `shaped`: every conversation templated (system prompt and
    signature), 5% of each source held out for eval, and two benchmark items that share the boilerplate."""
    prompts = [m["content"] for line in real_lines("alpaca_en_demo") for m in json.loads(line)["messages"][:1]
               if len(words(m["content"])) >= 15]
    items = rng.sample(sorted(set(prompts)), 300)
    records = [{"id": f"b{i}", "question": q} for i, q in enumerate(items)]
    if shaped:
        records += [{"id": "sys", "question": SYSTEM + " What is the boiling point of water at sea level?"},
                    {"id": "sig", "question": "Explain photosynthesis in two sentences. " + SIGNATURE}]
    tag = "-shaped" if shaped else ""
    bench = write(WORK / f"decon-bench{tag}.jsonl", records)
    clean = [json.loads(line) for stem in REAL_FILES[1:] for line in real_lines(stem)]
    planted = []
    for i, item in enumerate(items):
        host = json.loads(json.dumps(rng.choice(clean)))
        way = ("verbatim", "embedded", "case_punct")[i // 100]
        text = {"verbatim": item, "embedded": f"My teacher gave us this today. {item} Could you walk me through it?",
                "case_punct": item.upper().replace(" ", " - ").replace(",", ";") + "!!"}[way]
        host["messages"][[m["role"] for m in host["messages"]].index("user")]["content"] = text
        planted.append(host)
    originals = {"planted": planted, "clean": clean}
    if shaped:
        planted, clean = [templated(r) for r in planted], [templated(r) for r in clean]
    sources = [{"name": "planted", "path": str(write(WORK / f"decon-planted{tag}.jsonl", planted))},
               {"name": "clean", "path": str(write(WORK / f"decon-clean{tag}.jsonl", clean))}]
    recipe = {"sources": sources, "dedup": {"exact": False}, "decontaminate": {"benchmarks": [str(bench)]}}
    if shaped:
        recipe["eval"] = {"fraction": 0.05}
    result = mix(f"decon{tag}", recipe)
    gone = [r for r in removed(result) if r["reason"] == "contaminated"]
    hits = {r["row"]: r["benchmark"] for r in gone if r["source"] == "planted"}  # an eval near copy first, if so
    eval_file = Path(result["path"], "eval", "planted.jsonl")
    held = {json.loads(line)["row"] for line in eval_file.read_text().splitlines()} if eval_file.exists() else set()
    rows = ["| planted | removed (recall) |", "| --- | ---: |"]
    total = 0
    for k, way in enumerate(("verbatim", "embedded in a longer prompt", "case and punctuation changed")):
        planted_rows = [row for row in range(k * 100 + 1, k * 100 + 101) if row not in held]
        found = sum(row in hits for row in planted_rows)
        total += len(planted_rows)
        rows.append(f"| {way} | {found}/{len(planted_rows)} |")
    rows.append(f"| all | {len(hits)}/{total} = {len(hits) / total:.3f} |")
    if held:
        rows.append(f"\n{len(held)} planted rows were held out for eval, so not in training; of those removed, "
                    f"{sum(b != str(bench) for b in hits.values())} went first as an eval record's near copy.")
    fp = sum(r["source"] == "clean" and r["benchmark"] == str(bench) for r in gone)
    clean_in = result["sources"]["clean"]["in"] - result["sources"]["clean"]["held_out"]
    rows.append(f"{'' if held else chr(10)}False positives: {fp} of {clean_in} clean fastchat + glaive conversations removed against the "
                "same 300 alpaca items" + (" and the two items holding the system prompt and the signature." if shaped else "."))
    if shaped:
        near = [r for r in gone if r["benchmark"].startswith("eval/")]
        trained = sum(s["in"] - s["held_out"] for s in result["sources"].values())
        def original(record_id: str) -> dict:
            source, _, row = record_id.split(":")
            return originals[source][int(row) - 1]

        # the oracle: the two conversations as they were before the system prompt and signature were added
        plain = [dialogue_jaccard(original(r["id"]), original(r["item"])) for r in near]
        boilerplate_only = sum(j < THRESHOLD for j in plain)
        rows.append(f"Removed as an eval record's copy or near copy: {len(near)} of {trained} = {len(near) / trained:.2%}; "
                    f"of those, {boilerplate_only} share only boilerplate (their dialogues without the system prompt and "
                    f"signature below 0.8 Jaccard: {sorted(round(j, 3) for j in plain if j < THRESHOLD)}; the rest "
                    f"{sorted(round(j, 3) for j in plain if j >= THRESHOLD)}).")
    return rows


# ---------------------------------------------------------------- 3 throughput

def distinct_inputs(count: int) -> Path:
    lines = [line for stem in REAL_FILES for line in real_lines(stem) if line.strip()]
    out = WORK / f"distinct-{count}.jsonl"
    with open(out, "w", encoding="utf-8") as handle:
        for n in range(count):
            record = json.loads(lines[n % len(lines)])
            r = n // len(lines)
            if r and record["messages"][0]["role"] == "user":
                record["messages"][0]["content"] += f" (variant {r})"
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out


def throughput(inputs: list[Path], engines: tuple[str | None, ...] = (None,)) -> list[str]:
    rows = ["| input | engine | conversations | wall s | conversations/s | peak RSS MiB | removed |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for path in inputs:
        recipe = WORK / f"recipe-{path.stem}.yaml"
        recipe.write_text(json.dumps({"sources": [{"name": "all", "path": str(path)}], "dedup": {"near": {"threshold": 0.8}},
                                      "decontaminate": {"benchmarks": [str(ROOT / "data/benchmarks/tiny-bench.jsonl")]}}))
        outputs = []
        for engine in engines:
            out = WORK / "mix-speed" / f"{path.stem}-{'ray-' + engine if engine else 'local'}"
            run = run_measured([SFTPACK, "mix", "--recipe", str(recipe), "--out-dir", str(out)]
                               + (["--ray", engine] if engine else []))
            folder = Path(run.stdout.strip().splitlines()[-1])
            outputs.append(sorted((p.name, p.read_bytes()) for p in folder.rglob("*.jsonl")))
            manifest = json.loads((folder / "manifest.json").read_text())
            n = manifest["totals"]["in"]
            reasons = ", ".join(f"{k}={v}" for k, v in manifest["totals"]["removed"].items())
            rows.append(f"| {path.name} | {engine and f'--ray {engine}' or 'local'} | {n:,} | {run.wall_s:.1f} | "
                        f"{n / run.wall_s:,.0f} | {run.peak_rss_mib:.0f} | {reasons} |")
            print(rows[-1], flush=True)
        if any(o != outputs[0] for o in outputs):
            raise SystemExit(f"{path.name}: the engines wrote different files")
    return rows


def pack_rows(inputs: list[Path]) -> list[str]:
    """pack on the same inputs (default options, one process), for comparison."""
    rows = ["| input | command | conversations | wall s | conversations/s | peak RSS MiB |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for path in inputs:
        run = run_measured([SFTPACK, "pack", str(path), "--tokenizer", str(MODEL), "--max-length", "1024",
                            "--out-dir", str(WORK / "mix-speed" / f"pack-{path.stem}"), "--num-proc", "1"])
        n = sum(1 for _ in open(path, encoding="utf-8"))
        rows.append(f"| {path.name} | sftpack pack --max-length 1024 --num-proc 1 | {n:,} | {run.wall_s:.1f} | "
                    f"{n / run.wall_s:,.0f} | {run.peak_rss_mib:.0f} |")
        print(rows[-1], flush=True)
    return rows


def ray_section() -> str:
    """`--ray local` next to the local run (bench/MIX_RAY.md)."""
    rows = throughput([make_inputs("x10", 10), distinct_inputs(100_000)], (None, "local"))
    return "\n".join([
        "# sftpack mix on Ray: measured", "",
        "`.venv/bin/python bench/mix_bench.py --ray` (the same recipes as MIX.md's throughput, each input "
        "mixed locally and with `--ray local`, a one-machine Ray cluster started by the command; the files "
        f"are checked to be the same bytes). Machine: {machine()}. Peak RSS sums the whole process tree, "
        "Ray's own processes (GCS, raylet, workers, object store) included.", "", *rows, ""])


def main() -> int:
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-perm", type=int, default=128, help="near dedup permutations (the recipe default: 128)")
    parser.add_argument("--near-only", action="store_true", help="only section 1, printed (MIX.md is not written)")
    parser.add_argument("--decontamination-only", action="store_true", help="only section 2, printed (MIX.md is not written)")
    parser.add_argument("--ray", action="store_true", help="only local vs --ray local throughput, into bench/MIX_RAY.md")
    args = parser.parse_args()

    shutil.rmtree(WORK / "mix", ignore_errors=True)
    shutil.rmtree(WORK / "mix-speed", ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    if args.near_only:
        print("\n".join(near_quality(rng, args.num_perm)))
        return 0
    if args.decontamination_only:
        print("\n".join(decontamination(rng) + [""] + decontamination(random.Random(1), shaped=True)))
        return 0
    if args.ray:
        (ROOT / "bench" / "MIX_RAY.md").write_text(ray_section(), encoding="utf-8")
        return 0
    sections = [("Near-duplicate quality", near_quality(rng, args.num_perm)), ("Decontamination", decontamination(rng)),
                ("Decontamination on templated data (a system prompt and a signature on every row, 5% eval per source)",
                 decontamination(random.Random(1), shaped=True)),
                ("Throughput (whole `sftpack mix` processes, near dedup + decontamination)",
                 throughput([make_inputs("x10", 10), make_inputs("x100", 100), distinct_inputs(100_000)])),
                ("pack on the same inputs, for comparison", pack_rows([make_inputs("x10", 10), make_inputs("x100", 100)]))]
    facts = machine()
    text = ["# sftpack mix: measured", "", "`.venv/bin/python bench/mix_bench.py` (bench/mix_bench.py says how each "
            f"input is made). Machine: {facts}. Load average at the end: {os.getloadavg()[0]:.1f} (the CPU is shared).", ""]
    for title, rows in sections:
        text += [f"## {title}", "", *rows, ""]
        print("\n".join(rows), flush=True)
    (ROOT / "bench" / "MIX.md").write_text("\n".join(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
