"""The mixture recipe: one YAML, checked against `schemas/recipe.schema.json`, then typed.

    recipe.yaml ──parse_yaml──> mapping ──JSON Schema + the checks below──> Recipe (frozen dataclasses)

Every problem is collected and raised once, each naming its key (`sources.1.weight`) and the fix.
Defaults live only in the dataclasses here; the schema holds types and ranges.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

from sftpack.errors import SftpackError
from sftpack.io.layouts import ColumnMap, parse_role_map

SCHEMA_PATH = files("sftpack.schemas") / "recipe.schema.json"
SHARES = ("weight", "take", "epochs")
"""How a source's share is given: at most one of these per source."""
NEAR_ON = ("all", "prompt", "response")
DECONTAMINATE_MODES = ("remove", "report")


@dataclass(frozen=True)
class EvalSpec:
    """Held out of a source before anything else: a fraction of its valid records or a count."""

    fraction: float | None = None
    """Share of the source's valid records, rounded half up (0 <= fraction < 1)."""
    count: int | None = None
    """Number of the source's valid records."""

    def size(self, valid: int) -> int:
        """How many of `valid` records are held out."""
        if self.count is not None:
            return self.count
        return math.floor((self.fraction or 0.0) * valid + 0.5)


@dataclass(frozen=True)
class SourceSpec:
    """One input of the mixture, read as `sftpack.io.readers.open_input` reads it."""

    name: str
    """Names the source in train.jsonl (`source`), eval/<name>.jsonl and the manifest."""
    path: str
    """File, folder, glob or cached dataset name, in any container the readers accept."""
    format: str = "auto"
    """Layout: auto | messages | sharegpt | alpaca."""
    split: str | None = None
    """Split of a dataset name or DatasetDict folder (None: train)."""
    columns: ColumnMap = field(default_factory=ColumnMap)
    """Column map for data written in another shape."""
    weight: float | None = None
    """Share of the weighted part of the mixture, normalised over the sources that give one."""
    take: int | None = None
    """Exactly this many examples (whole repeats plus a seeded sample when more than it has)."""
    epochs: float | None = None
    """Passes over the source: 2.5 is every example twice plus a seeded half."""
    eval: EvalSpec | None = None
    """Held-out split of this source; None: the recipe's `eval`."""


@dataclass(frozen=True)
class NearDedup:
    """Near-duplicates: MinHash-LSH (rensa) over word n-grams of the conversation's text."""

    threshold: float = 0.8
    """Jaccard similarity of the word n-gram sets (exact; MinHash-LSH only proposes candidates) at or
    above which two conversations are one cluster (0, 1]."""
    ngram: int = 3
    """Words per shingle, after lowercasing and collapsing punctuation and whitespace."""
    num_perm: int = 128
    """MinHash permutations (signature length)."""
    on: str = "all"
    """Text compared: all turns | prompt (non-assistant turns) | response (assistant turns)."""


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    """Remove exact duplicate conversations (messages and tools, `conversation_key`)."""
    near: NearDedup | None = None
    """Near-duplicate search; None (no `near:` key) turns it off."""


@dataclass(frozen=True)
class Benchmark:
    """An evaluation set that training must not overlap."""

    path: str
    """Any readable container; records with messages, question/prompt/problem or text."""
    field: str | None = None
    """Field holding the item's text when it is none of those."""
    split: str | None = None
    """Split of a dataset name or DatasetDict folder."""


@dataclass(frozen=True)
class DecontamConfig:
    benchmarks: tuple[Benchmark, ...] = ()
    """Benchmark or eval files checked against."""
    ngram: int = 13
    """Words per n-gram, after lowercasing and collapsing punctuation and whitespace."""
    max_ngram_df: int = 10
    """An n-gram found in more than this many benchmark items is boilerplate and never matches."""
    mode: str = "remove"
    """remove: contaminated records are removed; report: only listed (reason `contaminated`, kept)."""
    eval_splits: bool = True
    """Also check against the recipe's own eval splits."""


@dataclass(frozen=True)
class FilterConfig:
    empty_answer: bool = True
    """Remove conversations with an assistant turn that is empty or whitespace (and calls no tool)."""
    answer_equals_prompt: bool = True
    """Remove conversations with an answer identical to the prompt before it."""
    require_reasoning: bool = False
    """Remove conversations whose last answer has no reasoning (reasoning_content or a <think> block)."""
    min_tokens: int | None = None
    """Fewest tokens of message text (needs `tokenizer`)."""
    max_tokens: int | None = None
    """Most tokens of message text (needs `tokenizer`)."""
    scripts: tuple[str, ...] | None = None
    """Keep only conversations whose dominant script is one of these (checks.scripts.SCRIPTS)."""


@dataclass(frozen=True)
class Recipe:
    sources: tuple[SourceSpec, ...]
    """The inputs, in priority order: duplicates keep the first by source order, then row."""
    total: int | None = None
    """Examples in the mixture; None: the weighted sources take as many as they can without repeats."""
    eval: EvalSpec = field(default_factory=EvalSpec)
    """Held out per source unless a source gives its own."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    tokenizer: str | None = None
    """Tokenizer folder: token-length filters and token counts in the manifest."""
    seed: int = 0
    """Seeds eval hold-out and sampling (per source, so adding a source changes no other's sample)."""
    origin: str = "<dict>"
    """Where the recipe came from, for messages."""

    def eval_of(self, source: SourceSpec) -> EvalSpec:
        return source.eval or self.eval


# ---------------------------------------------------------------- checking

def _schema_errors(raw: Mapping[str, Any]) -> list[str]:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    errors = []
    for err in sorted(jsonschema.Draft202012Validator(schema).iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        if err.validator == "additionalProperties":
            known = sorted(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(known)):
                errors.append(f"{where}.{key}: unknown key; valid keys here: {', '.join(known)}")
        elif err.validator == "enum":
            errors.append(f"{where}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}")
        else:
            errors.append(f"{where}: {err.message}")
    return errors


def _number_error(key: str, value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"{key}: {value!r} must be a finite number above 0 ({what}); fix it or remove the key"
    return None


def _source_errors(index: int, source: Mapping[str, Any]) -> list[str]:
    key = f"sources.{index}"
    given = [name for name in SHARES if source.get(name) is not None]
    errors = []
    if len(given) > 1:
        errors.append(f"{key} ({source.get('name')}): {' and '.join(given)} both given; keep one of weight, take, epochs")
    for name, what in (("weight", "a share of the mixture"), ("epochs", "passes over the source")):
        problem = _number_error(f"{key}.{name}", source.get(name), what)
        if problem:
            errors.append(problem)
    return errors


def _cross_errors(raw: Mapping[str, Any]) -> list[str]:
    """Pairs and values the schema cannot say, each naming the key and the fix."""
    sources = raw["sources"]
    errors = [e for i, s in enumerate(sources) for e in _source_errors(i, s)]
    names = [s["name"] for s in sources]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"sources: the name {name!r} is given {names.count(name)} times; names must be unique")
    near = (raw.get("dedup") or {}).get("near")
    threshold = (near or {}).get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        errors.append(f"dedup.near.threshold: {threshold!r} is outside (0, 1]; a Jaccard similarity such as 0.8")
    if raw.get("total") is not None and not any(s.get("weight") is not None for s in sources):
        errors.append("total: needs at least one source with a weight (take and epochs fix their own counts)")
    filters = raw.get("filters") or {}
    for bound in ("min_tokens", "max_tokens"):
        if filters.get(bound) is not None and not raw.get("tokenizer"):
            errors.append(f"filters.{bound}: needs tokenizer (a tokenizer folder) to count tokens")
    from sftpack.checks.scripts import SCRIPTS

    for script in filters.get("scripts") or ():
        if script not in SCRIPTS:
            errors.append(f"filters.scripts: {script!r} is not one of {', '.join(SCRIPTS)}")
    return errors


def _path_errors(recipe: Recipe) -> list[str]:
    """Inputs that cannot be opened, and a tokenizer folder that is not there."""
    from sftpack.io.readers import open_input

    errors = []
    for index, source in enumerate(recipe.sources):
        try:
            open_input(source.path, source.format, source.split, source.columns)
        except SftpackError as err:
            errors.append(f"sources.{index}.path ({source.name}): {err}")
    for index, bench in enumerate(recipe.decontaminate.benchmarks):
        if not Path(bench.path).exists() and not any(ch in bench.path for ch in "*?["):
            errors.append(f"decontaminate.benchmarks.{index}: {bench.path}: benchmark file not found")
    if recipe.tokenizer and not Path(recipe.tokenizer).is_dir():
        errors.append(f"tokenizer: {recipe.tokenizer}: tokenizer folder not found")
    return errors


# ---------------------------------------------------------------- building

def _columns(raw: Mapping[str, Any] | None) -> ColumnMap:
    raw = dict(raw or {})
    roles = parse_role_map(raw.pop("role_map") or "") if raw.get("role_map") else ()
    raw.pop("role_map", None)
    return ColumnMap(roles=roles, **raw)


def _eval(raw: Mapping[str, Any] | None) -> EvalSpec | None:
    return None if raw is None else EvalSpec(**raw)


def _typed(raw: Mapping[str, Any], origin: str) -> Recipe:
    sources = tuple(SourceSpec(**(dict(s) | {"columns": _columns(s.get("columns")), "eval": _eval(s.get("eval"))}))
                    for s in raw["sources"])
    dedup = dict(raw.get("dedup") or {})
    near = dedup.pop("near", None)
    decon = dict(raw.get("decontaminate") or {})
    benchmarks = tuple(Benchmark(path=b) if isinstance(b, str) else Benchmark(**b) for b in decon.pop("benchmarks", ()))
    filters = dict(raw.get("filters") or {})
    if filters.get("scripts") is not None:
        filters["scripts"] = tuple(filters["scripts"])
    top = {key: raw[key] for key in ("total", "tokenizer", "seed") if key in raw}
    return Recipe(sources=sources, eval=_eval(raw.get("eval")) or EvalSpec(),
                  dedup=DedupConfig(near=None if near is None else NearDedup(**near), **dedup),
                  decontaminate=DecontamConfig(benchmarks=benchmarks, **decon), filters=FilterConfig(**filters),
                  origin=origin, **top)


def build_recipe(raw: Any, origin: str = "<dict>", check_paths: bool = True) -> Recipe:
    """Check a recipe mapping and type it.

    Args:
        raw: the recipe as parsed YAML.
        origin: where it came from (the file), for messages.
        check_paths: also open every source and look for every benchmark (false: types only).

    Returns:
        The Recipe.

    Raises:
        SftpackError: every problem at once, one per line, each naming its key and the fix.
    """
    if not isinstance(raw, Mapping):
        raise SftpackError(f"{origin}: a recipe is a mapping with at least `sources:` (a list of name, path)")
    errors = _schema_errors(raw)
    if not errors:
        errors = _cross_errors(raw)
    recipe = None
    if not errors:
        recipe = _typed(raw, origin)
        if check_paths:
            errors = _path_errors(recipe)
    if errors:
        raise SftpackError(f"{origin}: invalid recipe:\n  " + "\n  ".join(errors), exit_code=2)
    return recipe


def load_recipe(recipe: "str | Path | Recipe | Mapping[str, Any]") -> Recipe:
    """A Recipe from a YAML path, a mapping or a Recipe.

    Raises:
        SftpackError: no such file, YAML syntax (with its line), or an invalid recipe.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return build_recipe(recipe)
    import yaml

    from sftpack.config.run_config import parse_yaml

    path = Path(recipe)
    if not path.is_file():
        raise SftpackError(f"{path}: recipe file not found (--recipe)", exit_code=2)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SftpackError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}", exit_code=2) from None
    return build_recipe(raw, str(path))
