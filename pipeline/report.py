"""The report stage: a dataset QA report (one self-contained HTML file + report.json), no training.

Raw conversations (any container and layout validate reads: pipeline/readers.py, streamed in batches):

    x.jsonl --readers, pack.first_reject (the validate checks)--> rejects: counted per rule, lines kept
            --encode_batch (template, mask, tokenize; batched)--> template errors join the rejects
            --conversation_facts + token counts--> examples table (polars, one row per valid example)
            --summaries, findings, plots--> report.json, report.html (written atomically)

A packed folder (`out/packed/<fingerprint>/`): its stats.parquet is the examples table and the
rows' lengths give the fill of each row.

Definitions used throughout (and in report.json):
  - turns: messages in the conversation (system and tool messages included);
  - exact duplicate: messages and tools equal to an earlier valid example's (canonical JSON);
  - similar prompt: the first user message, lowercased with runs of punctuation and whitespace
    collapsed to one space, equals an earlier example's, and the conversation is not an exact
    duplicate;
  - prompt tokens: tokens not trained (tokens - trained); response tokens: trained tokens;
  - script: the Unicode script with the most letters over all message contents.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

from pipeline import __version__
from pipeline.atomic import atomic_file, write_json
from pipeline.errors import SftpackError
from pipeline.messages import ROW_CHECKS, control_token_check, conversation_hash
from pipeline.pack import example_stem, first_reject, input_identity
from pipeline.packing import l2_lower_bound, lower_bound_rows, pack_bins
from pipeline.progress import progress_bar
from pipeline.readers import DATA_SUFFIXES, InputSource, ReadOptions, Row
from pipeline.shards import IGNORE_INDEX, MANIFEST, read_manifest

PERCENTILES = (50, 90, 95, 99)
SCRIPTS = {  # name -> Rust regex class (polars str.count_matches), checked in this order
    "latin": r"\p{Latin}",
    "cyrillic": r"\p{Cyrillic}",
    "greek": r"\p{Greek}",
    "cjk": r"\p{Han}|\p{Hiragana}|\p{Katakana}",
    "hangul": r"\p{Hangul}",
    "arabic": r"\p{Arabic}",
    "hebrew": r"\p{Hebrew}",
    "devanagari": r"\p{Devanagari}",
    "thai": r"\p{Thai}",
}
NO_SOURCE = "(none)"
_PUNCT_SPACE = re.compile(r"[\W_]+")
# How much a finding weighs per affected example when ranking (share of examples x weight).
FINDING_WEIGHTS = {
    "rejected": 1.0, "too_long": 1.0, "answers_truncated": 1.0, "exact_duplicates": 0.8,
    "short_answers": 0.8, "similar_prompts": 0.5, "language_mix": 0.5, "extreme_lengths": 0.3,
}

EXAMPLE_SCHEMA = {
    "input": pl.String, "line": pl.Int64, "example_id": pl.String, "source": pl.String, "turns": pl.Int64,
    "tool_calls": pl.Int64, "has_system": pl.Boolean, "shortest_answer_chars": pl.Int64, "script": pl.String,
    "duplicate_of": pl.Int64, "similar_prompt_of": pl.Int64, "tokens": pl.Int64, "trained_tokens": pl.Int64,
    "trained_beyond_max": pl.Int64,
}


@dataclass(frozen=True)
class ReportConfig:
    tokenizer: str | None = None
    """Tokenizer (model) folder; None: no token statistics (raw JSONL) or the manifest's (packed)."""
    max_length: int = 1024
    """Row length the data would be packed to: over it, examples are dropped or truncated."""
    chat_template: str | None = None
    """Jinja template file replacing the tokenizer's own."""
    train_on: str = "all"
    """all: every assistant turn is trained; last: only the final one (as in pack)."""
    turns: str = "auto"
    """auto: split where the template renders a turn unlike at inference; whole: as rendered (as in pack)."""
    reasoning: str = "train"
    """Assistant reasoning: train, mask or drop (as in pack)."""
    truncation: str = "drop"
    """What pack would do with examples over max_length: drop or truncate."""
    batch_size: int = 512
    """Conversations per tokenizer call."""
    examples: int = 10
    """Rows listed per finding and per reject rule."""
    short_answer_chars: int = 8
    """An assistant text answer shorter than this many characters (stripped) is a finding."""
    extreme_factor: float = 8.0
    """An example longer than factor x the median length, or shorter than median / factor, is extreme."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_length < 8:
            problems.append(f"max_length {self.max_length}: must be at least 8")
        from pipeline.masking import MaskOptions

        problems += MaskOptions(self.train_on, self.turns, self.reasoning).problems()
        if self.truncation not in ("drop", "truncate"):
            problems.append(f"truncation {self.truncation!r}: expected drop or truncate")
        if self.batch_size < 1 or self.examples < 0 or self.short_answer_chars < 0:
            problems.append("batch_size must be positive; examples and short_answer_chars 0 or more")
        if self.extreme_factor <= 1:
            problems.append(f"extreme_factor {self.extreme_factor}: must be above 1")
        if problems:
            raise SftpackError("report options: " + "; ".join(problems))


# ---------------------------------------------------------------- one conversation -> facts

def prompt_key(text: str) -> int | None:
    """8-byte hash of a prompt lowercased with punctuation/whitespace runs collapsed; None if empty."""
    normal = _PUNCT_SPACE.sub(" ", text.lower()).strip()
    if not normal:
        return None
    return int.from_bytes(hashlib.blake2b(normal.encode("utf-8"), digest_size=8).digest(), signed=True)


def conversation_facts(record: dict[str, Any]) -> dict[str, Any]:
    """Counts of one schema-valid conversation (no tokenizer needed).

    Returns:
        turns, roles (Counter), tool_calls, has_tools, system (text or None),
        shortest_answer_chars (None when every assistant turn only calls tools), first_prompt.
    """
    messages = record["messages"]
    roles = Counter(m["role"] for m in messages)
    answers = [len(m["content"].strip()) for m in messages if m["role"] == "assistant" and not m.get("tool_calls")]
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return {
        "turns": len(messages),
        "roles": roles,
        "tool_calls": sum(len(m.get("tool_calls") or ()) for m in messages),
        "has_tools": bool(record.get("tools")),
        "system": system,
        "shortest_answer_chars": min(answers) if answers else None,
        "first_prompt": next((m["content"] for m in messages if m["role"] == "user"), ""),
    }


def dominant_scripts(texts: list[str]) -> list[str]:
    """Per text, the script with the most letters (`SCRIPTS` names), or "none"."""
    if not texts:
        return []
    series = pl.Series(texts, dtype=pl.String)
    counts = np.stack([series.str.count_matches(pattern).to_numpy() for pattern in SCRIPTS.values()], axis=1)
    names = np.array(list(SCRIPTS), dtype=object)
    return np.where(counts.max(axis=1) > 0, names[counts.argmax(axis=1)], "none").tolist()


# ---------------------------------------------------------------- raw JSONL -> examples table

class _Encoder:
    """The tokenizer and renderer, loaded once (pack's loader: same template, same errors)."""

    def __init__(self, cfg: ReportConfig):
        from pipeline.tokenizer import load_renderer

        self.tokenizer, self.renderer = load_renderer(cfg.tokenizer, cfg.chat_template)
        from pipeline.masking import AUDIT_KEYS, MaskOptions

        self.options, self.max_length = MaskOptions(cfg.train_on, cfg.turns, cfg.reasoning), cfg.max_length
        self.audit = dict.fromkeys(AUDIT_KEYS, 0)
        """Masking's counts over every encoded conversation (split conversations, unrendered reasoning...)."""

    def encode(self, records: list[dict]) -> list[tuple[int, int, int] | str]:
        """Per record (tokens, trained tokens, trained tokens beyond max_length), or the error."""
        from pipeline.masking import encode_batch

        conversations = [{"messages": r["messages"], "tools": r.get("tools"), "id": r.get("id")} for r in records]
        out: list[tuple[int, int, int] | str] = []
        for example in encode_batch(self.renderer, self.tokenizer, conversations, self.options):
            for key, value in example.audit.items():
                self.audit[key] += value
            if example.error:
                out.append(f"{example.reason or 'template_error'}\t{example.error}")
                continue
            trained = [s.labels != IGNORE_INDEX for s in example.sequences]
            out.append((sum(t.size for t in trained), sum(int(t.sum()) for t in trained),
                        sum(int(t[self.max_length:].sum()) for t in trained)))
        return out


class _Scan:
    """Accumulates everything the report counts while lines stream by."""

    def __init__(self, cfg: ReportConfig):
        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.reason_lines: dict[str, list[str]] = {}
        self.reason_message: dict[str, str] = {}
        self.roles: Counter[str] = Counter()
        self.systems: Counter[str] = Counter()
        self.tools = Counter()
        self.first_conversation: dict[int, int] = {}  # conversation hash -> example index (1-based)
        self.first_prompt: dict[int, int] = {}

    def reject(self, where: str, rule: str, message: str) -> None:
        self.counts["rejected"] += 1
        self.reasons[rule] += 1
        lines = self.reason_lines.setdefault(rule, [])
        if len(lines) < self.cfg.examples:
            lines.append(where)
        self.reason_message.setdefault(rule, f"{where}: {message}")

    def add(self, where: tuple[str, str, int], record: dict, tokens: tuple[int, int, int] | None, script: str) -> None:
        """Count one valid example; `where` is (input file name, example-id stem, line or row)."""
        input_name, stem, line = where
        facts = conversation_facts(record)
        index = len(self.rows) + 1
        key = conversation_hash(record)
        duplicate_of = self.first_conversation.setdefault(key, index)
        pkey = prompt_key(facts["first_prompt"])
        similar_of = self.first_prompt.setdefault(pkey, index) if pkey is not None else index
        self.roles.update(facts["roles"])
        if facts["system"] is not None:
            self.systems[facts["system"]] += 1
        self.tools["conversations_with_tools"] += facts["has_tools"]
        self.tools["conversations_with_tool_calls"] += facts["tool_calls"] > 0
        self.tools["tool_calls"] += facts["tool_calls"]
        self.tools["tool_results"] += facts["roles"]["tool"]
        self.rows.append({
            "input": input_name, "line": line,
            "example_id": str(record["id"]) if record.get("id") is not None else f"{stem}:{line}",
            "source": str(record["source"]) if record.get("source") is not None else NO_SOURCE,
            "turns": facts["turns"], "tool_calls": facts["tool_calls"], "has_system": facts["system"] is not None,
            "shortest_answer_chars": facts["shortest_answer_chars"], "script": script,
            "duplicate_of": duplicate_of if duplicate_of != index else None,
            "similar_prompt_of": similar_of if similar_of != index else None,
            "tokens": tokens[0] if tokens else None, "trained_tokens": tokens[1] if tokens else None,
            "trained_beyond_max": tokens[2] if tokens else None,
        })


def _valid_rows(rows: list[Row], checks: list, scan: _Scan) -> list[Row]:
    """The rows validate would keep; the others counted as rejects, blank lines as blank."""
    valid = []
    for row in rows:
        if row.blank:
            scan.counts["blank"] += 1
            continue
        scan.counts["lines"] += 1
        error = first_reject(row.record, row.error, checks)  # a line counts once, under its first rule
        if error is not None:
            scan.reject(row.where(), error.rule, f"{error.path or '(line)'} {error.message}")
        else:
            valid.append(row)
    return valid


def scan_jsonl(inputs: list[InputSource | Path], cfg: ReportConfig,
               encoder: _Encoder | None) -> tuple[pl.DataFrame, _Scan]:
    """Check, encode and describe every record of `inputs`, streamed in batches.

    Args:
        inputs: opened inputs (readers.open_input: any container and layout); a plain path is
            opened with the default ReadOptions.
        cfg: the options.
        encoder: the tokenizer and template; None for no token counts (and no control-token check).

    Returns:
        (examples table in EXAMPLE_SCHEMA, one row per valid example in input order; the scan
        with counts, reject rules, roles, system prompts and tool counts).
    """
    sources = [s if isinstance(s, InputSource) else ReadOptions().open(s) for s in inputs]
    checks = list(ROW_CHECKS) + ([control_token_check(encoder.tokenizer)] if encoder else [])
    scan = _Scan(cfg)
    for source in sources:
        with progress_bar(None, f"report: {source.name}", unit="ex") as bar:
            for rows in source.batches(cfg.batch_size, blanks=True):
                bar.update(len(rows))
                valid = _valid_rows(rows, checks, scan)
                encoded = encoder.encode([row.record for row in valid]) if encoder else [None] * len(valid)
                kept = []
                for row, tokens in zip(valid, encoded):
                    if isinstance(tokens, str):
                        rule, message = tokens.split("\t", 1)
                        scan.reject(row.where(), rule, message)
                    else:
                        kept.append(((row.file, example_stem(source, row.file), row.number), row.record, tokens))
                texts = ["\n".join(m["content"] for m in r["messages"]) for _, r, _ in kept]
                for (where, record, tokens), script in zip(kept, dominant_scripts(texts)):
                    scan.add(where, record, tokens, script)
    scan.counts["valid"] = len(scan.rows)
    return pl.DataFrame(scan.rows, schema=EXAMPLE_SCHEMA, orient="row") if scan.rows else \
        pl.DataFrame(schema=EXAMPLE_SCHEMA), scan


# ---------------------------------------------------------------- summaries

def percentiles(values: pl.Series) -> dict[str, float]:
    """p50/p90/p95/p99 (linear interpolation, numpy's default) and max; {} when empty."""
    if values.len() == 0:
        return {}
    array = values.to_numpy()
    out = {f"p{q}": round(float(v), 1) for q, v in zip(PERCENTILES, np.percentile(array, PERCENTILES))}
    return out | {"max": int(array.max())}


def packing_estimate(lengths: np.ndarray, max_length: int) -> dict[str, Any]:
    """Rows pack would make of `lengths` (the same packer), with the efficiency (tokens / capacity)
    and two floors: ceil(tokens / max_length) and the Martello-Toth L2 bound (no packing beats it)."""
    tokens = int(lengths.sum())
    rows = len(pack_bins(lengths, max_length)) if lengths.size else 0
    return {"examples": int(lengths.size), "tokens": tokens, "rows": rows,
            "lower_bound_rows": lower_bound_rows(tokens, max_length),
            "l2_lower_bound_rows": l2_lower_bound(lengths, max_length) if lengths.size else 0,
            "packing_efficiency": round(tokens / (rows * max_length), 4) if rows else 0.0}


def kept_lengths(frame: pl.DataFrame, cfg: ReportConfig) -> pl.DataFrame:
    """The examples pack would keep, with the `length` they would pack at.

    drop: examples within max_length with trained tokens; truncate: every example whose first
    max_length tokens hold trained tokens, at min(tokens, max_length).
    """
    if cfg.truncation == "drop":
        kept = frame.filter((pl.col("tokens") <= cfg.max_length) & (pl.col("trained_tokens") > 0))
        return kept.with_columns(pl.col("tokens").alias("length"))
    kept = frame.filter(pl.col("trained_tokens") - pl.col("trained_beyond_max") > 0)
    return kept.with_columns(pl.min_horizontal("tokens", pl.lit(cfg.max_length)).alias("length"))


def token_summary(frame: pl.DataFrame, cfg: ReportConfig) -> dict[str, Any]:
    """Token totals, length percentiles, over-max counts and the packing estimate."""
    tokens, trained = int(frame["tokens"].sum()), int(frame["trained_tokens"].sum())
    over = frame.filter(pl.col("tokens") > cfg.max_length)
    kept = kept_lengths(frame, cfg)
    return {
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_share": round(trained / tokens, 4) if tokens else 0.0,
        "length_percentiles": {
            "conversation": percentiles(frame["tokens"]),
            "prompt": percentiles(frame["tokens"] - frame["trained_tokens"]),
            "response": percentiles(frame["trained_tokens"]),
        },
        "max_length": cfg.max_length,
        "truncation": cfg.truncation,
        "over_max_length": over.height,
        "would_drop": over.height if cfg.truncation == "drop" else 0,
        "would_truncate": over.height if cfg.truncation == "truncate" else 0,
        "answers_beyond_max_length": int((over["trained_beyond_max"] > 0).sum()),
        "no_trained_tokens": int((frame["trained_tokens"] == 0).sum()),
        "packing": packing_estimate(kept["length"].to_numpy(), cfg.max_length),
    }


def source_summary(frame: pl.DataFrame, cfg: ReportConfig, with_tokens: bool) -> dict[str, dict[str, Any]]:
    """Per source: examples, and with tokens the totals and the packing estimate."""
    out: dict[str, dict[str, Any]] = {}
    for (source,), group in frame.sort("source").group_by("source", maintain_order=True):
        entry: dict[str, Any] = {"examples": group.height}
        if with_tokens:
            tokens, trained = int(group["tokens"].sum()), int(group["trained_tokens"].sum())
            entry |= {"tokens": tokens, "trained_tokens": trained,
                      "trained_share": round(trained / tokens, 4) if tokens else 0.0,
                      "over_max_length": int((group["tokens"] > cfg.max_length).sum()),
                      "packing": packing_estimate(kept_lengths(group, cfg)["length"].to_numpy(), cfg.max_length)}
        out[source] = entry
    return out


def _where(frame: pl.DataFrame, mask: pl.Expr | pl.Series, cfg: ReportConfig, note: str | None = None,
           column: str | None = None) -> list[str]:
    """`input:line` (plus `note` formatted with `column`) of the first `cfg.examples` rows where mask holds.

    The strings are built in Python from those few rows, never with pl.format: polars 2.1's
    pl.format panics (`assertion failed: i < self.len()`, issue 14) on a string column split into
    chunks of some layouts, e.g. an empty first chunk left by a filter after a multi-threaded join.
    """
    hits = frame.filter(mask).head(cfg.examples).select("input", "line", *([column] if column else []))
    return [f"{row[0]}:{row[1]}" + (f" ({note.format(row[2])})" if note else "") for row in hits.iter_rows()]


def _repeats(frame: pl.DataFrame, mask: pl.Expr, column: str, cfg: ReportConfig, word: str) -> list[str]:
    """`input:line (word input:line)` of the first rows where mask holds, naming the earlier
    example that `column` points at (1-based index into frame); a lookup of a few rows, no join."""
    inputs, lines = frame["input"], frame["line"]
    hits = frame.filter(mask).head(cfg.examples).select("input", "line", column)
    return [f"{at}:{line} ({word} {inputs[k - 1]}:{lines[k - 1]})" for at, line, k in hits.iter_rows()]


def _finding(kind: str, count: int, total: int, message: str, rows: list[str], advice: str) -> dict[str, Any]:
    share = count / total if total else 0.0
    return {"kind": kind, "count": count, "share": round(share, 4),
            "impact": round(share * FINDING_WEIGHTS[kind], 4), "message": message, "rows": rows, "advice": advice}


def findings(frame: pl.DataFrame, scan: _Scan | None, cfg: ReportConfig, with_tokens: bool) -> list[dict[str, Any]]:
    """Problems worth a look, ranked by impact (share of examples x weight), each with rows to open."""
    total = frame.height + (scan.counts["rejected"] if scan else 0)
    out = []
    if scan and scan.counts["rejected"]:
        top = ", ".join(f"{rule} {n}" for rule, n in scan.reasons.most_common(3))
        rows = [line for lines in scan.reason_lines.values() for line in lines][: cfg.examples]
        out.append(_finding("rejected", scan.counts["rejected"], total, f"lines fail the validate checks ({top})",
                            rows, "fix or drop them (sftpack validate writes each reject with its rule)"))
    if frame.height == 0:
        return out
    dup = int(frame["duplicate_of"].is_not_null().sum())
    if dup:
        out.append(_finding("exact_duplicates", dup, total, "conversations repeat an earlier one exactly",
                            _repeats(frame, pl.col("duplicate_of").is_not_null(), "duplicate_of", cfg, "repeats"),
                            "deduplicate: repeats weigh those examples double in training"))
    similar_mask = pl.col("similar_prompt_of").is_not_null() & pl.col("duplicate_of").is_null()
    similar = int(frame.select(similar_mask.sum()).item())
    if similar:
        out.append(_finding("similar_prompts", similar, total,
                            "first user prompts repeat an earlier one (after lowercasing and collapsing punctuation)",
                            _repeats(frame, similar_mask, "similar_prompt_of", cfg, "like"),
                            "check the answers agree; keep one or a few per prompt"))
    short_mask = pl.col("shortest_answer_chars") < cfg.short_answer_chars
    short = int(frame.select(short_mask.sum()).item())
    if short:
        out.append(_finding("short_answers", short, total,
                            f"conversations with an assistant answer under {cfg.short_answer_chars} characters",
                            _where(frame, short_mask, cfg, "{} chars", "shortest_answer_chars"),
                            "very short answers teach terse replies; check they are intended"))
    if with_tokens:
        over_mask = pl.col("tokens") > cfg.max_length
        over = int(frame.select(over_mask.sum()).item())
        if over and cfg.truncation == "drop":
            out.append(_finding("too_long", over, total, f"examples over max_length {cfg.max_length} would be dropped",
                                _where(frame, over_mask, cfg, "{} tokens", "tokens"),
                                "raise --max-length or split the conversations"))
        cut_mask = over_mask & (pl.col("trained_beyond_max") > 0)
        cut = int(frame.select(cut_mask.sum()).item())
        if cut and cfg.truncation == "truncate":
            out.append(_finding("answers_truncated", cut, total,
                                f"answers cut by max_length {cfg.max_length} (the model learns to stop mid-answer)",
                                _where(frame, cut_mask, cfg, "{} trained tokens cut", "trained_beyond_max"),
                                "raise --max-length or drop these examples (truncation: drop)"))
    scripts = frame["script"].filter(frame["script"] != "none").value_counts(sort=True)
    if scripts.height > 1:
        main = scripts["script"][0]
        mix_mask = (pl.col("script") != main) & (pl.col("script") != "none")
        mix = int(frame.select(mix_mask.sum()).item())
        mix_text = ", ".join(f"{s} {n}" for s, n in scripts.iter_rows())
        out.append(_finding("language_mix", mix, total, f"examples not mostly in {main} script ({mix_text})",
                            _where(frame, mix_mask, cfg, "{}", "script"),
                            "check the mix is intended; a few stray languages teach switching"))
    length = pl.col("tokens") if with_tokens else None
    if length is not None:
        median = float(frame["tokens"].median())
        extreme_mask = (length > median * cfg.extreme_factor) | (length < median / cfg.extreme_factor)
        extreme = int(frame.select(extreme_mask.sum()).item())
        if extreme:
            out.append(_finding("extreme_lengths", extreme, total,
                                f"examples over {cfg.extreme_factor:g}x or under 1/{cfg.extreme_factor:g} of the "
                                f"median length ({median:g} tokens)",
                                _where(frame, extreme_mask, cfg, "{} tokens", "tokens"),
                                "look for pasted documents, logs or truncated answers"))
    return sorted(out, key=lambda f: (-f["impact"], f["kind"]))


def describe_jsonl(frame: pl.DataFrame, scan: _Scan, cfg: ReportConfig, with_tokens: bool) -> dict[str, Any]:
    """The report's numbers for raw JSONL inputs (everything in report.json but provenance)."""
    counts = {"lines": scan.counts["lines"], "blank": scan.counts["blank"], "valid": scan.counts["valid"],
              "rejected": scan.counts["rejected"]}
    turns = frame["turns"].value_counts().sort("turns")
    return {
        "counts": counts,
        "rejected_reasons": [{"rule": rule, "count": n, "first": scan.reason_message[rule],
                              "lines": scan.reason_lines[rule]} for rule, n in scan.reasons.most_common()],
        "turns": {"per_conversation": {str(t): n for t, n in turns.iter_rows()},
                  "mean": round(float(frame["turns"].mean()), 3) if frame.height else 0.0},
        "roles": {role: scan.roles[role] for role in ("system", "user", "assistant", "tool")},
        "system_prompts": {"conversations": int(frame["has_system"].sum()), "distinct": len(scan.systems),
                           "top": [{"text": text[:200], "count": n} for text, n in scan.systems.most_common(5)]},
        "tools": {key: int(scan.tools[key]) for key in ("conversations_with_tools", "conversations_with_tool_calls",
                                                         "tool_calls", "tool_results")},
        "duplicates": {"exact": int(frame["duplicate_of"].is_not_null().sum()),
                       "similar_prompts": int(frame.select(pl.col("similar_prompt_of").is_not_null()
                                                           & pl.col("duplicate_of").is_null()).sum().item())},
        "scripts": {s: n for s, n in frame["script"].value_counts(sort=True).iter_rows()},
        "sources": source_summary(frame, cfg, with_tokens),
        "tokens": token_summary(frame, cfg) if with_tokens else None,
        "findings": findings(frame, scan, cfg, with_tokens),
    }


# ---------------------------------------------------------------- packed folders

def read_packed_rows(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, pl.DataFrame]:
    """Per packed row: tokens, trained tokens, sequences; plus the PackedRowLengths input table."""
    import datasets
    import pyarrow.compute as pc


    try:
        table = datasets.load_from_disk(str(folder)).data.table
    except (OSError, ValueError) as err:
        raise SftpackError(f"{folder}: cannot open the packed rows: {err}") from None
    ids = table.column("input_ids").combine_chunks()
    labels = table.column("labels").combine_chunks()
    tokens = np.asarray(pc.list_value_length(ids), dtype=np.int64)
    trained_flat = (np.asarray(labels.flatten()) != IGNORE_INDEX).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.asarray(pc.list_value_length(labels), dtype=np.int64))])
    trained = np.diff(np.concatenate([[0], np.cumsum(trained_flat)])[bounds])
    sequences = np.asarray(pc.list_value_length(table.column("seq_lengths").combine_chunks()), dtype=np.int64)
    lengths = pl.from_arrow(table.select(["input_ids", "labels", "seq_lengths", "example_ids"]))
    return tokens, trained, sequences, lengths


def describe_packed(folder: Path, manifest: dict[str, Any], cfg: ReportConfig) -> tuple[dict[str, Any], pl.DataFrame | None, np.ndarray]:
    """The report's numbers for a packed folder: rows and their fill, and stats.parquet's examples.

    Returns:
        (numbers, the validated stats table or None when the folder has none, row lengths).
    """
    from schemas.tables import ExampleStats, PackedRowLengths, packed_row_lengths, validate_table

    tokens, trained, sequences, table = read_packed_rows(folder)
    validate_table(PackedRowLengths, packed_row_lengths(table, cfg.max_length), f"{folder} rows")
    capacity = tokens.size * cfg.max_length
    report: dict[str, Any] = {
        "rows": {"rows": int(tokens.size), "tokens": int(tokens.sum()), "trained_tokens": int(trained.sum()),
                 "trained_share": round(int(trained.sum()) / int(tokens.sum()), 4) if tokens.sum() else 0.0,
                 "sequences": int(sequences.sum()),
                 "packing_efficiency": round(int(tokens.sum()) / capacity, 4) if capacity else 0.0,
                 "lower_bound_rows": lower_bound_rows(int(tokens.sum()), cfg.max_length),
                 "fill_percentiles": {k: round(v / cfg.max_length, 4) for k, v in
                                      percentiles(pl.Series(tokens)).items()} if tokens.size else {}},
        "manifest_totals": manifest.get("totals"),
    }
    stats_path = folder / "stats.parquet"
    if not stats_path.is_file():
        return report | {"findings": []}, None, tokens
    stats = validate_table(ExampleStats, pl.read_parquet(stats_path), str(stats_path))
    kept = stats.filter(pl.col("dropped").is_null()).with_columns(pl.col("tokens", "trained_tokens").cast(pl.Int64))
    kept = kept.with_columns(pl.when(pl.col("source").is_null()).then(pl.lit(NO_SOURCE)).otherwise("source")
                             .alias("source"), pl.lit(0, pl.Int64).alias("trained_beyond_max"))
    dropped = stats["dropped"].drop_nulls().value_counts(sort=True)
    report["counts"] = {"examples": stats.height, "packed": kept.height, "truncated": int(stats["truncated"].sum()),
                        "dropped": {reason: n for reason, n in dropped.iter_rows()}}
    report["turns"] = {"per_conversation": {str(t): n for t, n in kept["turns"].value_counts().sort("turns").iter_rows()},
                       "mean": round(float(kept["turns"].mean()), 3) if kept.height else 0.0}
    report["sources"] = source_summary(kept, cfg, with_tokens=True)
    report["tokens"] = token_summary(kept, cfg)
    total = stats.height
    found = []
    for reason, n in dropped.iter_rows():
        kind = "too_long" if reason == "too_long" else "rejected"
        found.append(_finding(kind, n, total, f"examples dropped while packing: {reason}",
                              _where(stats, pl.col("dropped") == reason, cfg), "see the manifest's first_drops"))
    if report["counts"]["truncated"]:
        found.append(_finding("answers_truncated", report["counts"]["truncated"], total,
                              f"examples truncated to max_length {cfg.max_length}",
                              _where(stats, pl.col("truncated"), cfg), "raise max_length or drop them"))
    if kept.height:
        median = float(kept["tokens"].median())
        mask = (pl.col("tokens") > median * cfg.extreme_factor) | (pl.col("tokens") < median / cfg.extreme_factor)
        n = int(kept.select(mask.sum()).item())
        if n:
            found.append(_finding("extreme_lengths", n, total, f"examples over {cfg.extreme_factor:g}x or under "
                                  f"1/{cfg.extreme_factor:g} of the median length ({median:g} tokens)",
                                  _where(kept, mask, cfg, "{} tokens", "tokens"),
                                  "look for pasted documents, logs or truncated answers"))
    report["findings"] = sorted(found, key=lambda f: (-f["impact"], f["kind"]))
    return report, kept, tokens


# ---------------------------------------------------------------- plots (matplotlib Agg, inline PNG)

def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=96)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def make_plots(frame: pl.DataFrame | None, max_length: int, row_tokens: np.ndarray | None,
               with_tokens: bool) -> dict[str, str]:
    """Titled base64 PNGs: token lengths with the max_length line, trained share, turns,
    per-source bars, and the fill of (packed or estimated) rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    size = (6.4, 3.2)
    if frame is not None and frame.height and with_tokens:
        fig, ax = plt.subplots(figsize=size)
        ax.hist(frame["tokens"].to_numpy(), bins=50, color="#4477aa")
        ax.axvline(max_length, color="#cc3311", linestyle="--", label=f"max_length {max_length}")
        ax.set(xlabel="tokens per conversation", ylabel="examples")
        ax.legend()
        plots["Token lengths"] = _png(fig)
        fig, ax = plt.subplots(figsize=size)
        share = (frame["trained_tokens"] / frame["tokens"].clip(1)).to_numpy()
        ax.hist(share, bins=np.linspace(0, 1, 41), color="#228833")
        ax.set(xlabel="trained share of the example's tokens", ylabel="examples")
        plots["Trained share per example"] = _png(fig)
    if frame is not None and frame.height:
        turns = frame["turns"].value_counts().sort("turns")
        fig, ax = plt.subplots(figsize=size)
        ax.bar(turns["turns"].cast(pl.String).to_list(), turns["count"].to_list(), color="#66ccee")
        ax.set(xlabel="messages per conversation", ylabel="conversations")
        plots["Turns per conversation"] = _png(fig)
        sources = frame.group_by("source").agg(pl.len().alias("examples"),
                                                *([pl.col("tokens").sum()] if with_tokens else [])).sort("source")
        fig, axes = plt.subplots(1, 2 if with_tokens else 1, figsize=size, squeeze=False)
        names = sources["source"].to_list()
        axes[0][0].barh(names, sources["examples"].to_list(), color="#aa3377")
        axes[0][0].set(xlabel="examples")
        if with_tokens:
            axes[0][1].barh(names, sources["tokens"].to_list(), color="#ccbb44")
            axes[0][1].set(xlabel="tokens")
            axes[0][1].set_yticklabels([])
        plots["Per source"] = _png(fig)
    if row_tokens is not None and row_tokens.size:
        fig, ax = plt.subplots(figsize=size)
        ax.hist(row_tokens / max_length, bins=np.linspace(0, 1, 41), color="#bbbbbb", edgecolor="#555555")
        ax.set(xlabel="row length / max_length", ylabel="rows")
        plots["Fill of rows"] = _png(fig)
    return plots


# ---------------------------------------------------------------- HTML

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:980px;
 padding:12px;color:#222;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{flex:1 1 140px;border:1px solid #ddd;border-radius:6px;padding:8px}
.card b{display:block;font-size:1.3em}.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.92em;min-width:50%}td,th{border:1px solid #ddd;padding:3px 6px;
 text-align:left;vertical-align:top}th{background:#f4f4f4}img{max-width:100%;height:auto}
code{font-size:.9em;white-space:nowrap}.muted{color:#666}td{min-width:3.5em}
@media (max-width:600px){body{font-size:14px;padding:6px}}
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{html.escape(str(k))}: {_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return "<br>".join(f"<code>{html.escape(str(v))}</code>" for v in value) or "-"
    return html.escape("-" if value is None else str(value))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def _pairs(mapping: dict[str, Any], key: str = "", value: str = "") -> str:
    return _table([{key or "name": k, value or "value": v} for k, v in mapping.items()])


def render_html(report: dict[str, Any], plots: dict[str, str]) -> str:
    """The report as one self-contained, phone-friendly HTML page (inline CSS and PNGs)."""
    cards = {k: v for k, v in report["cards"].items()}
    parts = [f"<h1>sftpack report</h1><p class=muted>{_cell(report['inputs_label'])} · sftpack "
             f"{html.escape(report['version'])}</p>",
             "<div class=cards>" + "".join(f"<div class=card><b>{_cell(v)}</b>{html.escape(k)}</div>"
                                           for k, v in cards.items()) + "</div>",
             "<h2>Findings (by impact)</h2>",
             _table([{"finding": f["kind"], "count": f["count"], "share": f"{f['share']:.1%}",
                      "what": f["message"], "rows to look at": f["rows"], "advice": f["advice"]}
                     for f in report["findings"]])]
    if report.get("rejected_reasons"):
        parts += ["<h2>Rejected lines by rule</h2>", _table(report["rejected_reasons"])]
    tokens = report.get("tokens")
    if tokens:
        parts += ["<h2>Tokens</h2>",
                  _pairs({k: v for k, v in tokens.items() if k not in ("length_percentiles", "packing")}),
                  "<h3>Length percentiles (tokens)</h3>",
                  _table([{"part": part} | values for part, values in tokens["length_percentiles"].items()]),
                  "<h3>Packing estimate (as pack would pack)</h3>" if report["kind"] == "jsonl" else
                  "<h3>Kept examples, repacked</h3>",
                  _pairs(tokens["packing"])]
    elif report["kind"] == "jsonl":
        parts.append("<h2>Tokens</h2><p class=muted>no tokenizer given (--tokenizer or --config): token "
                     "statistics skipped</p>")
    if report.get("mask_audit"):
        parts += ["<h2>Masks: will it stop</h2><p class=muted>split conversations and their extra tokens; turns whose "
                  "reasoning or tool calls the template does not render; turns or sequences that end in no stop "
                  "token; trained spans holding a role header (these last must be 0)</p>",
                  _pairs(report["mask_audit"])]
    if report.get("rows"):
        parts += ["<h2>Packed rows</h2>", _pairs({k: v for k, v in report["rows"].items()})]
    if report.get("sources"):
        parts += ["<h2>Sources</h2>", _table([{"source": s} | {k: v for k, v in e.items()}
                                               for s, e in report["sources"].items()])]
    for key, title in (("counts", "Counts"), ("turns", "Turns"), ("roles", "Messages per role"),
                       ("tools", "Tools"), ("duplicates", "Duplicates"), ("scripts", "Scripts (language mix)")):
        if report.get(key):
            parts += [f"<h2>{title}</h2>", _pairs(report[key])]
    if report.get("system_prompts"):
        sp = report["system_prompts"]
        parts += ["<h2>System prompts</h2>", _pairs({"conversations": sp["conversations"], "distinct": sp["distinct"]}),
                  _table(sp["top"])]
    parts.append("<h2>Plots</h2>")
    for title, png in plots.items():
        parts.append(f"<h3>{html.escape(title)}</h3><img alt=\"{html.escape(title)}\" "
                     f"src=\"data:image/png;base64,{png}\">")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>sftpack report</title><style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


# ---------------------------------------------------------------- the stage

def _open_inputs(inputs: list[str | Path], out: Path, read: ReadOptions) -> tuple[Path | None, list[InputSource]]:
    """Open the inputs, collecting every usage problem and raising once (exit 2).

    Returns:
        (the packed folder, []) for one packed folder, else (None, the inputs opened with `read`).
    """
    problems, sources, specs = [], [], [str(p) for p in inputs]
    if not specs:
        problems.append("give at least one input (JSONL, Parquet, a folder, a glob or a dataset name) or one "
                        "packed folder")
    packed = [Path(spec) for spec in specs if (Path(spec) / MANIFEST).is_file()]
    if packed and len(specs) > 1:
        problems.append("give one packed folder, or data inputs, not both or several packed folders")
    for spec in specs if not packed else []:
        if spec.endswith(DATA_SUFFIXES) and not Path(spec).exists() and not any(ch in spec for ch in "*?["):
            problems.append(f"{spec}: input not found")  # a file name: never looked up as a dataset name
            continue
        try:
            sources.append(read.open(spec))
        except SftpackError as err:
            folder = f"{spec}: not a packed folder (no {MANIFEST} inside); " if Path(spec).is_dir() else ""
            problems.append(folder + str(err))
    if out.suffix.lower() != ".html":
        problems.append(f"--out {out}: expected an .html path (report.json is written beside it)")
    if problems:
        raise SftpackError("report: " + "\n  ".join(problems), exit_code=2)
    return (packed[0] if packed else None), sources


def run(inputs: list[str | Path], out: str | Path, cfg: ReportConfig,
        read: ReadOptions | None = None) -> dict[str, Any]:
    """Write the QA report of raw conversations or of one packed folder.

    Args:
        inputs: files, folders, globs or dataset names in any layout (readers.open_input), or
            one packed folder (`manifest.json` inside).
        out: the HTML path; the same numbers go to `<out without .html>.json` beside it.
        cfg: the options. For a packed folder, max_length comes from its manifest.
        read: how raw inputs are read (layout, split, column map); auto-detected layout by default.

    Returns:
        What report.json holds (plus `html` and `json`: the paths written).

    Raises:
        SftpackError: (exit 2) missing inputs, a folder that is not packed, mixed inputs, an
            unusable tokenizer or template; a table failing its pandera schema.
    """
    started = time.perf_counter()
    out = Path(out)
    folder, sources = _open_inputs(list(inputs), out, read or ReadOptions())
    if folder is not None:
        manifest = read_manifest(folder) or {}
        max_length = int((manifest.get("options") or {}).get("max_length") or cfg.max_length)
        cfg = dataclasses.replace(cfg, max_length=max_length)
        numbers, frame, row_tokens = describe_packed(folder, manifest, cfg)
        report = {"kind": "packed"} | numbers
        mask_audit = (manifest.get("totals") or {}).get("audit")  # pack's own counts (format 2 folders lack them)
        provenance = {"inputs": [{"path": str(folder), "fingerprint": manifest.get("fingerprint"),
                                  "inputs": manifest.get("inputs")}], "tokenizer": manifest.get("tokenizer")}
        plots = make_plots(frame, max_length, row_tokens, frame is not None)
        counts = report.get("counts") or {}
        cards = {"examples": counts.get("examples"), "packed rows": report["rows"]["rows"],
                 "packing efficiency": f"{report['rows']['packing_efficiency']:.1%}",
                 "trained share": f"{report['rows']['trained_share']:.1%}"}
    else:
        encoder = _Encoder(cfg) if cfg.tokenizer else None
        frame, scan = scan_jsonl(sources, cfg, encoder)
        mask_audit = encoder.audit if encoder else None
        from schemas.tables import ReportExamples, validate_table

        validate_table(ReportExamples, frame, "report examples table")
        with_tokens = encoder is not None
        report = {"kind": "jsonl"} | describe_jsonl(frame, scan, cfg, with_tokens)
        identity = None
        if encoder:
            from pipeline.fingerprint import tokenizer_identity

            identity = tokenizer_identity(encoder.tokenizer, encoder.renderer.template)
        provenance = {"inputs": [input_identity(source) for source in sources], "tokenizer": identity}
        row_tokens = None
        if with_tokens and frame.height:
            kept = kept_lengths(frame, cfg)["length"].to_numpy()
            row_tokens = np.array([kept[row].sum() for row in pack_bins(kept, cfg.max_length)])
        plots = make_plots(frame, cfg.max_length, row_tokens, with_tokens)
        cards = {"lines": report["counts"]["lines"], "valid": report["counts"]["valid"],
                 "rejected": report["counts"]["rejected"], "exact duplicates": report["duplicates"]["exact"]}
        if with_tokens:
            t = report["tokens"]
            cards |= {"tokens": t["tokens"], "trained share": f"{t['trained_share']:.1%}",
                      f"over {cfg.max_length}": t["over_max_length"], "est. packed rows": t["packing"]["rows"]}
    if mask_audit is not None:
        report["mask_audit"] = mask_audit
    report = {"stage": "report", "version": __version__, **provenance, "options": dataclasses.asdict(cfg)} | report
    report["seconds"] = round(time.perf_counter() - started, 3)
    json_path = out.with_suffix(".json")
    write_json(json_path, report)
    page = render_html(report | {"cards": cards, "inputs_label": ", ".join(map(str, inputs))}, plots)
    with atomic_file(out, "w", encoding="utf-8") as handle:
        handle.write(page)
    return report | {"html": str(out), "json": str(json_path)}
