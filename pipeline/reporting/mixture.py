"""The mixture report (`sftpack report --recipe`): a recipe's mixture before and after, from the mix
folder's own files (manifest.json, removed.jsonl, train.jsonl), made or reused by the mix stage.

    recipe ──mixing.stage.run (reused by fingerprint)──> manifest, removed.jsonl, train.jsonl
           ──> shares per source (examples in and out, trained tokens), removals by reason per source,
               the top contaminated benchmarks with example matches, the largest near-duplicate
               clusters with their members side by side ──> report.html + report.json
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sftpack.reporting.html import CSS, _table
from sftpack.reporting.plots import _png
from sftpack.store.atomic import atomic_file, write_json

TOP = 10  # benchmarks, clusters and matches shown
SNIPPET = 160


def _snippet(messages: list[dict[str, Any]] | None) -> str:
    if not messages:
        return "-"
    text = " | ".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def _shares(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    sources, totals = manifest["sources"], manifest["totals"]
    rows = []
    for name, s in sources.items():
        row = {"source": name, "in": s["in"], "share in": f"{s['in'] / max(1, totals['in']):.1%}", "held out": s["held_out"],
               "out": s["out"], "share out": f"{s['out'] / max(1, totals['out']):.1%}", "repeated": s["repeated"]}
        if "tokens" in s:
            row |= {"tokens": s["tokens"], "share of tokens": f"{s['tokens'] / max(1, totals['tokens']):.1%}"}
        rows.append(row)
    return rows


def _removed(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[dict]]]:
    """The top contaminated benchmarks with example matches, and the largest near-duplicate clusters."""
    benchmarks: Counter = Counter()
    matches: dict[str, list[dict[str, Any]]] = defaultdict(list)
    clusters: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with open(folder / "removed.jsonl", encoding="utf-8") as handle:
        for line in handle:
            entry = json.loads(line)
            if entry["reason"] == "contaminated":
                benchmarks[entry["benchmark"]] += 1
                if len(matches[entry["benchmark"]]) < 3:
                    why = entry.get("ngram") or f"Jaccard {entry.get('jaccard')}"  # a benchmark n-gram, an eval near copy
                    matches[entry["benchmark"]].append({"record": entry["id"], "item": entry["item"], "n-gram": why})
            elif entry["reason"] == "near_duplicate":
                clusters[entry["kept"]].append(entry)
    top = [{"benchmark": name, "records removed": n, "example matches": [
        f"{m['record']} ~ {m['item']}: {m['n-gram']}" for m in matches[name]]} for name, n in benchmarks.most_common(TOP)]
    largest = dict(sorted(clusters.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:TOP])
    return top, [{"kept": k, "members": len(v)} for k, v in largest.items()], largest


def _keepers(folder: Path, ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The messages of the kept records named in `ids`, from train.jsonl."""
    found: dict[str, list[dict[str, Any]]] = {}
    with open(folder / "train.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            key = f"{record['source']}:{record['input']}:{record['row']}"
            if key in ids and key not in found:
                found[key] = record["messages"]
    return found


def _plots(shares: list[dict[str, Any]]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["source"] for row in shares]
    plots = {}
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.4
    ax.bar([i - width / 2 for i in range(len(names))], [row["in"] for row in shares], width, label="in")
    ax.bar([i + width / 2 for i in range(len(names))], [row["out"] for row in shares], width, label="out (trained)")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("examples")
    ax.legend()
    plots["Examples per source, before and after"] = _png(fig)
    if all("tokens" in row for row in shares):
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(names, [row["tokens"] for row in shares])
        ax.set_ylabel("tokens trained (message text)")
        plots["Trained tokens per source"] = _png(fig)
    return plots


def run(recipe: Any, out: str | Path, mix_dir: str | Path) -> dict[str, Any]:
    """Mix (or reuse) the recipe into `mix_dir`, then write its report to `out` and report.json beside it.

    Args:
        recipe: a recipe YAML path, mapping or Recipe.
        out: the HTML path.
        mix_dir: parent of the mix folder.

    Returns:
        What report.json holds, plus `html` and `json` (the paths written).
    """
    from sftpack.mixing import stage as mix

    manifest = mix.run(recipe, mix_dir)
    folder = Path(manifest["path"])
    shares = _shares(manifest)
    contamination, cluster_rows, clusters = _removed(folder)
    keepers = _keepers(folder, set(clusters))
    sides = [{"kept": kept, "kept text": _snippet(keepers.get(kept)),
              "removed (estimated Jaccard)": [f"{m['id']} ({m['jaccard']}): {_snippet(m.get('messages'))}" for m in members[:5]]}
             for kept, members in clusters.items()]
    removed = [{"source": name} | s["removed"] for name, s in manifest["sources"].items()]
    report = {"mix": str(folder), "fingerprint": manifest["fingerprint"], "totals": manifest["totals"],
              "shares": shares, "removed": removed, "contamination": contamination, "clusters": cluster_rows}
    out = Path(out)
    json_path = out.with_suffix(".json")
    write_json(json_path, report)
    body = [f"<h1>sftpack mixture report</h1><p class=muted>{html.escape(str(folder))}</p>",
            "<h2>Shares: before and after</h2>", _table(shares), "<h2>Removed, by reason and source</h2>", _table(removed),
            "<h2>Top contaminated benchmarks</h2>", _table(contamination),
            "<h2>Largest near-duplicate clusters</h2>", _table(sides)]
    body += [f"<h3>{html.escape(t)}</h3><img alt=\"{html.escape(t)}\" src=\"data:image/png;base64,{png}\">"
             for t, png in _plots(shares).items()]
    with atomic_file(out, "w", encoding="utf-8") as handle:
        handle.write("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
                     f"content=\"width=device-width, initial-scale=1\"><title>sftpack mixture report</title><style>{CSS}"
                     "</style></head><body>" + "\n".join(body) + "</body></html>\n")
    return report | {"html": str(out), "json": str(json_path)}
