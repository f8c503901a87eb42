"""The mix stage: a recipe's sources -> one clean, decontaminated, weighted training set.

    recipe ──load_recipe──> sources (readers), benchmarks
           ──read, hold out, clean, sample (pipeline/mixing/passes.py, clean.py)──> out_dir/<fingerprint>/
                 train.jsonl          messages JSONL; each line keeps source, input, row
                 eval/<source>.jsonl  held out before anything else; never trained
                 removed.jsonl        every record left out, with its reason and details
                 contamination.jsonl  matches listed (decontaminate.mode: report)
                 manifest.json        per source counts, totals, the recipe, versions (written last)

The folder is built under a temp name and renamed into place; its name is the fingerprint of the
sources' and benchmarks' bytes as read, the recipe's settings and the tokenizer files, so an
unchanged recipe is reused (after checking the files' sha256) and a changed one rebuilds.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from sftpack import __version__
from sftpack.errors import SftpackError
from sftpack.io.readers import InputSource
from sftpack.mixing import sampling
from sftpack.mixing.clean import Cleaner
from sftpack.mixing.decontaminate import NgramIndex, benchmark_files
from sftpack.mixing.passes import SPILL, Removed, SourceCounts, hold_out, read_sources, spill_lines
from sftpack.mixing.recipe import Recipe, load_recipe
from sftpack.store.atomic import atomic_dir, output_parent, write_json
from sftpack.store.fingerprint import fingerprint, sha256_file, tokenizer_files_identity
from sftpack.store.manifest import MANIFEST, read_manifest

MIX_FORMAT_VERSION = 2  # 2: near duplicates decided on the exact Jaccard (a folder made by 1 is not reused)


def _open(recipe: Recipe) -> list[InputSource]:
    from sftpack.io.readers import open_input

    return [open_input(s.path, s.format, s.split, s.columns) for s in recipe.sources]


def _fingerprint(recipe: Recipe, opened: list[InputSource]) -> tuple[str, list[dict[str, Any]]]:
    """The folder's name and the inputs' identities: content, not paths (moving a file reuses)."""
    from importlib.metadata import version

    identities = [source.identity() for source in opened]
    settings = dataclasses.asdict(recipe)
    settings.pop("origin")
    settings["tokenizer"] = tokenizer_files_identity(recipe.tokenizer) if recipe.tokenizer else None
    for source, identity in zip(settings["sources"], identities):
        source["path"] = {k: identity.get(k) for k in ("sha256", "container", "layout", "split")}
    for bench, spec in zip(settings["decontaminate"]["benchmarks"], recipe.decontaminate.benchmarks):
        bench["path"] = [sha256_file(f) for f in benchmark_files(spec)[0]]  # the files read: a README beside them is not
    payload = {"format": MIX_FORMAT_VERSION, "recipe": settings, "rensa": version("rensa")}
    return fingerprint(payload), identities


def _outputs(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def _reuse(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete folder whose files are the bytes it lists; None otherwise."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    if _outputs(folder) != manifest.get("outputs"):
        print(f"mix: {folder} does not match its manifest, rebuilding", file=sys.stderr)
        return None
    return manifest


def run(recipe: "Recipe | str | Path | dict", out_dir: str | Path, ray: str | None = None) -> dict[str, Any]:
    """Mix the recipe's sources into `out_dir/<fingerprint>/`, or reuse that folder.

    Args:
        recipe: a Recipe, a recipe YAML path or a mapping (pipeline/mixing/recipe.py).
        out_dir: parent of the mixture folder.
        ray: run the lookups, band keys and per-component deduplication on this Ray cluster (local, auto,
            HOST:PORT); the same files. Every node must see out_dir at the same path. Not part of
            the fingerprint.

    Returns:
        The manifest, with `path` (the folder) and `reused` added.

    Raises:
        SftpackError: an invalid recipe (every problem at once), an empty source, eval larger than a
            source, a total that take and epochs already exceed, an unwritable out_dir.
    """
    started = time.time()
    recipe = load_recipe(recipe)
    opened = _open(recipe)
    fp, identities = _fingerprint(recipe, opened)
    folder = output_parent(out_dir) / fp
    existing = _reuse(folder)
    if existing is not None:
        return existing | {"path": str(folder), "reused": True}
    engine = {"name": "local"}
    if ray:
        from sftpack.distributed.cluster import connect, leave

        engine = connect(ray)
    try:
        with atomic_dir(folder) as tmp:
            counts = _build(tmp, recipe, opened, ray is not None)
            shutil.rmtree(tmp / SPILL)
            manifest = _manifest(tmp, recipe, fp, identities, counts, started) | {"engine": engine}
            write_json(tmp / MANIFEST, manifest)
    finally:
        if ray:
            leave()  # no late node message after the folder path, printed last
    return manifest | {"path": str(folder), "reused": False}


def summary(manifest: dict[str, Any]) -> list[str]:
    """What `sftpack mix` prints: totals, one line per source, the folder's path last."""
    verb = "reused (checksums verified)" if manifest["reused"] else f"mixed in {manifest['seconds']:.1f}s"
    t = manifest["totals"]
    lines = [f"{verb}: {t['in']} read -> {t['out']} training examples ({t['sampled']} distinct, {t['repeated']} "
             f"repeats), {t['held_out']} held out for eval"]
    for name, s in manifest["sources"].items():
        removed = ", ".join(f"{k}={v}" for k, v in s["removed"].items()) or "none"
        tokens = f", {s['tokens']:,} tokens" if "tokens" in s else ""
        lines.append(f"  {name}: in {s['in']}, eval {s['held_out']}, out {s['out']}{tokens}; removed: {removed}")
    return lines + [manifest["path"]]


def _build(tmp: Path, recipe: Recipe, opened: list[InputSource], ray: bool) -> dict[str, SourceCounts]:
    """Passes 1-4 (pipeline/mixing/passes.py) into `tmp`; returns the counts per source."""
    counts = {s.name: SourceCounts(tokens=0 if recipe.tokenizer else None) for s in recipe.sources}
    decon = recipe.decontaminate
    index, eval_copies = NgramIndex(decon.ngram, decon.max_ngram_df), {}
    with open(tmp / "removed.jsonl", "wb") as removed_file, open(tmp / "contamination.jsonl", "wb") as matches:
        removed = Removed(removed_file, counts)
        valid = read_sources(tmp, recipe, opened, removed)
        held = hold_out(tmp, recipe, valid, counts, index, eval_copies)
        for bench in decon.benchmarks:
            index.add_benchmark(bench)
        cluster = None
        if ray:  # lookups, band keys and per-component deduplication on the nodes
            from sftpack.distributed.mix_tasks import ClusterLines

            spills = [tmp / SPILL / f"{i}.jsonl" for i in range(len(recipe.sources))]
            cluster = ClusterLines(spills, index, recipe.dedup)
        Cleaner(recipe, removed, index, eval_copies, matches, cluster).run(tmp, held, valid, counts)
        _sample(tmp, recipe, counts, removed)
    if not (tmp / "contamination.jsonl").stat().st_size:
        (tmp / "contamination.jsonl").unlink()
    return counts


def _sample(tmp: Path, recipe: Recipe, counts: dict[str, SourceCounts], removed: Removed) -> None:
    """Pass 4: each source's target count of its kept records into train.jsonl; the rest not_sampled."""
    import msgspec

    targets = sampling.target_counts(recipe, {name: c.available for name, c in counts.items()})
    with open(tmp / "train.jsonl", "wb") as train:
        for i, spec in enumerate(recipe.sources):
            tally = counts[spec.name]
            whole, extra = sampling.copies(recipe, spec.name, targets[spec.name], tally.available)
            for position, raw in spill_lines(tmp / SPILL / f"{i}.kept.jsonl"):
                times = whole + (position in extra)
                if times == 0:
                    removed.add(msgspec.json.decode(raw), "not_sampled", messages=False)
                    continue
                train.write(raw * times)
                tally.sampled += 1
                tally.repeated += times - 1
                tally.out += times
                if tally.tokens is not None:
                    tally.tokens += times * tally.kept_tokens[position]


def _manifest(tmp: Path, recipe: Recipe, fp: str, identities: list[dict[str, Any]],
              counts: dict[str, SourceCounts], started: float) -> dict[str, Any]:
    from importlib.metadata import version

    sources = {spec.name: {"input": identity} | counts[spec.name].as_dict()
               for spec, identity in zip(recipe.sources, identities)}
    totals = {key: sum(s[key] for s in sources.values()) for key in ("in", "held_out", "sampled", "repeated", "out")}
    totals["removed"] = {}
    for source in sources.values():
        for reason, n in source["removed"].items():
            totals["removed"][reason] = totals["removed"].get(reason, 0) + n
    if recipe.tokenizer:
        totals["tokens"] = sum(s["tokens"] for s in sources.values())
    return {
        "fingerprint": fp,
        "mix_format": MIX_FORMAT_VERSION,
        "sftpack_version": __version__,
        "created_unix": int(time.time()),
        "sources": sources,
        "totals": dict(sorted(totals.items())),
        "outputs": _outputs(tmp),
        "recipe": dataclasses.asdict(recipe),
        "versions": {"python": platform.python_version(), "rensa": version("rensa"), "sftpack": __version__},
        "seconds": round(time.time() - started, 3),
    }
