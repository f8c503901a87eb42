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
    repeat: bool = True
    """False: never more examples than the source has left (take and weight capped at what is there)."""


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
    boilerplate_share: float = 0.01
    """An n-gram found in more than this share of one source's distinct dialogues (and in more than
    max_ngram_df of them) is boilerplate of the training data (a system prompt, a signature) and never matches."""
    mode: str = "remove"
    """remove: contaminated records are removed; report: only listed (reason `contaminated`, kept)."""
    eval_splits: bool = True
    """Also check against the recipe's own eval splits: a training record that is an eval record, or
    its near duplicate (dedup.near's settings, on the dialogue), is contaminated."""


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
    allow_rejects: bool = False
    """Mix the rest when lines fail the schema or the conversation rules (counted per rule); false:
    stop, naming file:line and rule (one reject policy, as validate and pack's --allow-rejects)."""
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # absent, or not a number: the schema says so
    if not math.isfinite(value) or value <= 0:
        return f"{key}: {value!r} must be a finite number above 0 ({what}); fix it or remove the key"
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sources(raw: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """The source entries that are mappings, with their index (the schema reports the others)."""
    sources = raw.get("sources")
    return [(i, s) for i, s in enumerate(sources) if isinstance(s, Mapping)] if isinstance(sources, list) else []


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
    epochs = source.get("epochs")
    if source.get("repeat") is False and isinstance(epochs, (int, float)) and epochs > 1:
        errors.append(f"{key} ({source.get('name')}): epochs {epochs} repeats examples and repeat: false forbids it; "
                      "keep one of them")
    return errors


def _cross_errors(raw: Mapping[str, Any]) -> list[str]:
    """Pairs and values the schema cannot say, each naming the key and the fix (on whatever parts of
    the recipe have the right shape, so they come with the schema's problems)."""
    sources = _sources(raw)
    errors = [e for i, s in sources for e in _source_errors(i, s)]
    names = [s.get("name") for _, s in sources]
    for name in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
        errors.append(f"sources: the name {name!r} is given {names.count(name)} times; names must be unique")
    threshold = _mapping(_mapping(raw.get("dedup")).get("near")).get("threshold")
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and not 0 < threshold <= 1:
        errors.append(f"dedup.near.threshold: {threshold!r} is outside (0, 1]; a Jaccard similarity such as 0.8")
    if raw.get("total") is not None and sources and not any(s.get("weight") is not None for _, s in sources):
        errors.append("total: needs at least one source with a weight (take and epochs fix their own counts)")
    filters = _mapping(raw.get("filters"))
    for bound in ("min_tokens", "max_tokens"):
        if filters.get(bound) is not None and not raw.get("tokenizer"):
            errors.append(f"filters.{bound}: needs tokenizer (a tokenizer folder) to count tokens")
    from sftpack.checks.scripts import SCRIPTS

    scripts = filters.get("scripts")
    for script in scripts if isinstance(scripts, list) else ():
        if isinstance(script, str) and script not in SCRIPTS:
            errors.append(f"filters.scripts: {script!r} is not one of {', '.join(SCRIPTS)}")
    return errors


def _path_errors(raw: Mapping[str, Any]) -> list[str]:
    """Inputs that cannot be opened, benchmarks and a tokenizer folder that are not there (for the
    entries whose shape lets them be looked for)."""
    from sftpack.io.layouts import FORMATS
    from sftpack.io.readers import open_input

    errors = []
    for index, source in _sources(raw):
        path = source.get("path")
        if not isinstance(path, str) or not path:
            continue
        try:
            columns = _columns(source.get("columns"))
        except (TypeError, ValueError, SftpackError):
            columns = ColumnMap()  # the schema names the bad column key
        layout = source.get("format") if source.get("format") in FORMATS else "auto"
        split = source.get("split") if isinstance(source.get("split"), str) else None
        try:
            open_input(path, layout, split, columns)
        except SftpackError as err:
            errors.append(f"sources.{index}.path ({source.get('name')}): {err}")
    benchmarks = _mapping(raw.get("decontaminate")).get("benchmarks")
    for index, bench in enumerate(benchmarks if isinstance(benchmarks, list) else ()):
        path = bench if isinstance(bench, str) else _mapping(bench).get("path")
        if isinstance(path, str) and path and not Path(path).exists() and not any(ch in path for ch in "*?["):
            errors.append(f"decontaminate.benchmarks.{index}: {path}: benchmark file not found")
    tokenizer = raw.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer and not Path(tokenizer).is_dir():
        errors.append(f"tokenizer: {tokenizer}: tokenizer folder not found")
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
    top = {key: raw[key] for key in ("total", "tokenizer", "seed", "allow_rejects") if key in raw}
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
    errors = _schema_errors(raw) + _cross_errors(raw) + (_path_errors(raw) if check_paths else [])
    if errors:
        raise SftpackError(f"{origin}: invalid recipe:\n  " + "\n  ".join(errors), exit_code=2)
    return _typed(raw, origin)


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
