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
import json
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sftpack import __version__
from sftpack.errors import SftpackError
from sftpack.execution import Execution, Executor
from sftpack.io.readers import InputSource
from sftpack.mixing import sampling
from sftpack.mixing.decontaminate import Contamination, EvalIndex, NgramIndex, benchmark_files
from sftpack.mixing.passes import SPILL, Removed, SourceCounts, hold_out, read_sources, spill_dialogues, spill_lines
from sftpack.mixing.recipe import NearDedup, Recipe, load_recipe
from sftpack.mixing.tasks import clean
from sftpack.records import reject_policy as refuse_rejects
from sftpack.store.atomic import atomic_dir, output_parent, write_json
from sftpack.store.fingerprint import fingerprint, sha256_file, tokenizer_files_identity
from sftpack.store.manifest import MANIFEST, read_manifest

MIX_FORMAT_VERSION = 3  # 2: near duplicates on the exact Jaccard; 3: decontamination on the dialogue (README)


def _open(recipe: Recipe) -> list[InputSource]:
    from sftpack.io.readers import open_input

    return [open_input(s.path, s.format, s.split, s.columns) for s in recipe.sources]


def _fingerprint(recipe: Recipe, opened: list[InputSource]) -> tuple[str, list[dict[str, Any]]]:
    """The folder's name and the inputs' identities: content, not paths (moving a file reuses)."""
    from importlib.metadata import version

    identities = [source.identity() for source in opened]
    settings = dataclasses.asdict(recipe)
    settings.pop("origin")
    settings.pop("allow_rejects")  # the folder is the same either way
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


def run(recipe: "Recipe | str | Path | dict", out_dir: str | Path, allow_rejects: bool | None = None,
        execution: Execution | None = None) -> dict[str, Any]:
    """Mix the recipe's sources into `out_dir/<fingerprint>/`, or reuse that folder.

    Args:
        recipe: a Recipe, a recipe YAML path or a mapping (pipeline/mixing/recipe.py).
        out_dir: parent of the mixture folder.
        allow_rejects: over the recipe's `allow_rejects` when given (--allow-rejects). Not part of
            the fingerprint: the folder is written either way, as pack's.
        execution: where pass 3's tasks run (mixing/tasks.py): this machine's cores by default, or a
            Ray cluster, where every node must see out_dir at the same path; the same files either
            way. Not part of the fingerprint.

    Returns:
        The manifest, with `path` (the folder) and `reused` added.

    Raises:
        SftpackError: an invalid recipe (every problem at once), an empty source, eval larger than a
            source, a total that take and epochs already exceed, an unwritable out_dir (exit 2);
            rejected lines without allow_rejects, a mixture with no training example (exit 1).
    """
    started = time.time()
    recipe = load_recipe(recipe)
    if allow_rejects is not None:
        recipe = dataclasses.replace(recipe, allow_rejects=allow_rejects)
    opened = _open(recipe)
    fp, identities = _fingerprint(recipe, opened)
    folder = output_parent(out_dir) / fp
    existing = _reuse(folder)
    if existing is not None:
        return reject_policy(existing | {"path": str(folder), "reused": True}, recipe)
    with (execution or Execution()).executor() as executor, atomic_dir(folder) as tmp:
        counts = _build(tmp, recipe, opened, executor)
        shutil.rmtree(tmp / SPILL)
        engine = {"name": "local"} if not executor.distributed else executor.describe()
        manifest = _manifest(tmp, recipe, fp, identities, counts, started) | {"engine": engine}
        write_json(tmp / MANIFEST, manifest)
    return reject_policy(manifest | {"path": str(folder), "reused": False}, recipe)


def _rejected(manifest: dict[str, Any]) -> Counter:
    return Counter({k: v for s in manifest["sources"].values() for k, v in s["removed"].items() if k.startswith("rejected_")})


def _per_rule(rejected: Counter) -> str:
    return ", ".join(f"{k.removeprefix('rejected_')}={v}" for k, v in sorted(rejected.items()))


def reject_policy(manifest: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """The manifest, unless lines were rejected (schema, conversation rules) and the recipe does not
    allow rejects (records.reject_policy); the first rejected lines come from removed.jsonl."""
    rejected = _rejected(manifest)
    paths = {spec.name: spec.path for spec in recipe.sources}
    first: list[str] = []
    with open(Path(manifest["path"]) / "removed.jsonl", "rb") as handle:
        for raw in handle:
            if len(first) == 5 or not rejected or recipe.allow_rejects:
                break
            if b'"reason": "rejected_' not in raw:
                continue
            entry = json.loads(raw)
            if entry["reason"].startswith("rejected_"):
                error = (entry.get("errors") or [{}])[0]
                source = paths[entry["source"]]
                where = source if Path(source).is_file() else f"{source}: {entry['input']}"
                first.append(f"{where}:{entry['row']} [{error.get('rule', entry['reason'][9:])}] {error.get('message', '')}")
    refuse_rejects(recipe.allow_rejects, {k.removeprefix("rejected_"): v for k, v in rejected.items()},
                   manifest["totals"]["in"], "records", first,
                   f"{Path(manifest['path']) / 'removed.jsonl'} lists every one", "mix the rest", where="mix",
                   setting="allow_rejects: true in the recipe")
    return manifest


def summary(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What `sftpack mix` prints: (totals, one line per source, the folder's path last; warnings:
    one per source that repeats examples because it asks for more than it has left, and the
    rejects --allow-rejects let through)."""
    verb = "reused (checksums verified)" if manifest["reused"] else f"mixed in {manifest['seconds']:.1f}s"
    t = manifest["totals"]
    lines = [f"{verb}: {t['in']} read -> {t['out']} training examples ({t['sampled']} distinct, {t['repeated']} "
             f"repeats), {t['held_out']} held out for eval"]
    for name, s in manifest["sources"].items():
        removed = ", ".join(f"{k}={v}" for k, v in s["removed"].items()) or "none"
        tokens = f", {s['tokens']:,} tokens" if "tokens" in s else ""
        lines.append(f"  {name}: in {s['in']}, eval {s['held_out']}, out {s['out']}{tokens}; removed: {removed}")
    warnings = []
    for spec in manifest["recipe"]["sources"]:
        s = manifest["sources"][spec["name"]]
        asked = f"take {spec['take']}" if spec.get("take") is not None else (
            f"weight {spec['weight']}" if spec.get("weight") is not None else None)
        if asked and s["repeated"]:
            warnings.append(f"{spec['name']}: {asked} needs {s['out']} examples and {s['available']} are left after "
                            f"hold-out and removals: {s['repeated']} repeats; `repeat: false` caps it at {s['available']}")
    rejected = _rejected(manifest)
    if rejected:
        warnings.append(f"{sum(rejected.values())} records failed the schema or the conversation rules and were left "
                        f"out ({_per_rule(rejected)}; removed.jsonl lists them)")
    return lines + [manifest["path"]], warnings


def _build(tmp: Path, recipe: Recipe, opened: list[InputSource], executor: Executor) -> dict[str, SourceCounts]:
    """Passes 1-4 (pipeline/mixing/passes.py) into `tmp`; returns the counts per source."""
    counts = {s.name: SourceCounts(tokens=0 if recipe.tokenizer else None) for s in recipe.sources}
    decon = recipe.decontaminate
    index, eval_copies = NgramIndex(decon.ngram, decon.max_ngram_df), {}
    evals = EvalIndex(recipe.dedup.near or NearDedup())
    spills = [tmp / SPILL / f"{i}.jsonl" for i in range(len(recipe.sources))]
    with open(tmp / "removed.jsonl", "wb") as removed_file, open(tmp / "contamination.jsonl", "wb") as matches:
        removed = Removed(removed_file, counts)
        valid = read_sources(tmp, recipe, opened, removed)
        held = hold_out(tmp, recipe, valid, counts, evals, eval_copies)
        for bench in decon.benchmarks:
            index.add_benchmark(bench)
        lookups = Contamination(index, evals)
        lookups.mark_boilerplate((spill_dialogues(path) for path in spills), decon.boilerplate_share)
        clean(tmp, recipe, lookups, eval_copies, held, counts, removed, matches, executor)
        _sample(tmp, recipe, counts, removed)
    if not sum(c.out for c in counts.values()):
        reasons = Counter()
        for c in counts.values():
            reasons.update(c.removed)
        raise SftpackError(f"{recipe.origin}: the mixture has no training example ({sum(c.read for c in counts.values())} "
                           f"read, {sum(c.held_out for c in counts.values())} held out; removed: "
                           f"{', '.join(f'{k}={v}' for k, v in sorted(reasons.items())) or 'none'}); "
                           "fix the sources or loosen the filters", exit_code=1)
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
        "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "allow_rejects"},
        "versions": {"python": platform.python_version(), "rensa": version("rensa"), "sftpack": __version__},
        "seconds": round(time.time() - started, 3),
    }
