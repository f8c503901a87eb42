"""Report, part 2: the numbers and findings of report.json, from the examples table (raw
conversations) or from a packed folder's stats.parquet and rows.

Prompt tokens are the tokens not trained (tokens - trained); response tokens the trained ones.
Findings are ranked by impact: the share of examples affected times their weight (kinds.KINDS).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from sftpack.errors import SftpackError
from sftpack.packing.bins import l2_lower_bound, lower_bound_rows, pack_bins
from sftpack.store.packed_folder import PackedFolder
from sftpack.reporting.kinds import MASK_KINDS, finding as _finding, mask_message
from sftpack.reporting.scan import PERCENTILES, ReportConfig, _Scan
from sftpack.templates.masking import IGNORE_INDEX

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


def findings(frame: pl.DataFrame, scan: _Scan | None, cfg: ReportConfig, with_tokens: bool) -> list[dict[str, Any]]:
    """Problems worth a look, ranked by impact (share of examples x weight), each with rows to open."""
    total = frame.height + (scan.counts["rejected"] if scan else 0)
    out = []
    if scan and scan.counts["rejected"]:
        top = ", ".join(f"{rule} {n}" for rule, n in scan.reasons.most_common(3))
        rows = [line for lines in scan.reason_lines.values() for line in lines][: cfg.examples]
        out.append(_finding("rejected", scan.counts["rejected"], total, f"lines fail the validate checks ({top})",
                            rows))
    if frame.height == 0:
        return out
    out += _content_findings(frame, cfg, total)
    if with_tokens:
        out += _length_findings(frame, cfg, total) + _mask_findings(frame, scan, cfg, total)
    return sorted(out, key=lambda f: (-f["impact"], f["kind"]))


def _content_findings(frame: pl.DataFrame, cfg: ReportConfig, total: int) -> list[dict[str, Any]]:
    """Repeats, similar prompts, short answers, a mix of scripts."""
    out = []
    dup = int(frame["duplicate_of"].is_not_null().sum())
    if dup:
        pairs = repeats_by_input(frame)
        where = "; ".join(f"{p['input']} repeats {p['count']:,} row{'s' if p['count'] != 1 else ''} of "
                          + ("itself" if p["input"] == p["of"] else p["of"]) for p in pairs[:5])
        out.append(_finding("exact_duplicates", dup, total, f"conversations repeat an earlier one exactly ({where})",
                            _repeats(frame, pl.col("duplicate_of").is_not_null(), "duplicate_of", cfg, "repeats"))
                   | {"pairs": pairs})
    similar_mask = pl.col("similar_prompt_of").is_not_null() & pl.col("duplicate_of").is_null()
    similar = int(frame.select(similar_mask.sum()).item())
    if similar:
        out.append(_finding("similar_prompts", similar, total,
                            "first user prompts repeat an earlier one (after lowercasing and collapsing punctuation)",
                            _repeats(frame, similar_mask, "similar_prompt_of", cfg, "like")))
    short_mask = pl.col("shortest_answer_chars") < cfg.short_answer_chars
    short = int(frame.select(short_mask.sum()).item())
    if short:
        out.append(_finding("short_answers", short, total,
                            f"conversations with an assistant answer under {cfg.short_answer_chars} characters",
                            _where(frame, short_mask, cfg, "{} chars", "shortest_answer_chars")))
    scripts = frame["script"].filter(frame["script"] != "none").value_counts(sort=True)
    if scripts.height > 1:
        main = scripts["script"][0]
        mix_mask = (pl.col("script") != main) & (pl.col("script") != "none")
        mix = int(frame.select(mix_mask.sum()).item())
        mix_text = ", ".join(f"{s} {n}" for s, n in scripts.iter_rows())
        out.append(_finding("language_mix", mix, total, f"examples not mostly in {main} script ({mix_text})",
                            _where(frame, mix_mask, cfg, "{}", "script")))
    return out


def _length_findings(frame: pl.DataFrame, cfg: ReportConfig, total: int) -> list[dict[str, Any]]:
    """Examples over max_length (dropped or cut mid-answer) and extreme lengths."""
    out = []
    over_mask = pl.col("tokens") > cfg.max_length
    over = int(frame.select(over_mask.sum()).item())
    if over and cfg.truncation == "drop":
        out.append(_finding("too_long", over, total, f"examples over max_length {cfg.max_length} would be dropped",
                            _where(frame, over_mask, cfg, "{} tokens", "tokens")))
    cut_mask = over_mask & (pl.col("trained_beyond_max") > 0)
    cut = int(frame.select(cut_mask.sum()).item())
    if cut and cfg.truncation == "truncate":
        out.append(_finding("answers_truncated", cut, total,
                            f"answers cut by max_length {cfg.max_length} (the model learns to stop mid-answer)",
                            _where(frame, cut_mask, cfg, "{} trained tokens cut", "trained_beyond_max")))
    length = pl.col("tokens")
    median = float(frame["tokens"].median())
    extreme_mask = (length > median * cfg.extreme_factor) | (length < median / cfg.extreme_factor)
    extreme = int(frame.select(extreme_mask.sum()).item())
    if extreme:
        out.append(_finding("extreme_lengths", extreme, total,
                            f"examples over {cfg.extreme_factor:g}x or under 1/{cfg.extreme_factor:g} of the "
                            f"median length ({median:g} tokens)",
                            _where(frame, extreme_mask, cfg, "{} tokens", "tokens")))
    return out


def _mask_findings(frame: pl.DataFrame, scan: _Scan | None, cfg: ReportConfig, total: int) -> list[dict[str, Any]]:
    """What masking's audit found, per conversation, and examples with nothing trained."""
    out = []
    nothing_mask = pl.col("trained_tokens") == 0
    nothing = int(frame.select(nothing_mask.sum()).item())
    if nothing:
        out.append(_finding("no_trained_tokens", nothing, total, "examples train no token (pack drops them)",
                            _where(frame, nothing_mask, cfg)))
    for kind in MASK_KINDS:
        examples = scan.audit_examples[kind] if scan is not None else 0
        if examples:
            counted = mask_message(kind, scan.audit_counts[kind], examples, scan.audit_counts["split_extra_tokens"])
            out.append(_finding(kind, examples, total, counted, scan.audit_rows[kind]))
    return out


def repeats_by_input(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Exact duplicates counted per (input, input of the earlier copy), most first.

    Returns:
        [{"input": file name, "of": the earlier copy's file name, "count": rows}].
    """
    dup = frame.select(pl.col("input"), pl.col("duplicate_of")).with_row_index("row").filter(
        pl.col("duplicate_of").is_not_null())
    if dup.height == 0:
        return []
    earlier = frame["input"].gather((dup["duplicate_of"] - 1).cast(pl.UInt32))
    pairs = dup.select("input").with_columns(earlier.alias("of")).group_by("input", "of").len("count")
    return [{"input": i, "of": o, "count": n} for i, o, n in pairs.sort(["count", "input", "of"],
                                                                         descending=[True, False, False]).iter_rows()]


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

def read_packed_rows(packed: PackedFolder) -> tuple[np.ndarray, np.ndarray, np.ndarray, pl.DataFrame]:
    """Per packed row: tokens, trained tokens, sequences; plus the PackedRowLengths input table."""
    import pyarrow.compute as pc

    try:
        table = packed.dataset().data.table
    except (OSError, ValueError) as err:
        raise SftpackError(f"{packed.path}: cannot open the packed rows: {err}") from None
    ids = table.column("input_ids").combine_chunks()
    labels = table.column("labels").combine_chunks()
    tokens = np.asarray(pc.list_value_length(ids), dtype=np.int64)
    trained_flat = (np.asarray(labels.flatten()) != IGNORE_INDEX).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.asarray(pc.list_value_length(labels), dtype=np.int64))])
    trained = np.diff(np.concatenate([[0], np.cumsum(trained_flat)])[bounds])
    sequences = np.asarray(pc.list_value_length(table.column("seq_lengths").combine_chunks()), dtype=np.int64)
    lengths = pl.from_arrow(table.select(["input_ids", "labels", "seq_lengths", "example_ids"]))
    return tokens, trained, sequences, lengths


def describe_packed(packed: PackedFolder, cfg: ReportConfig) -> tuple[dict[str, Any], pl.DataFrame | None, np.ndarray]:
    """The report's numbers for a packed folder: rows and their fill, and stats.parquet's examples.

    Returns:
        (numbers, the validated stats table or None when the folder has none, row lengths).
    """
    from sftpack.schemas.tables import ExampleStats, PackedRowLengths, packed_row_lengths, validate_table

    folder = packed.path
    tokens, trained, sequences, table = read_packed_rows(packed)
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
        "manifest_totals": packed.manifest.get("totals"),
    }
    stats_path = folder / "stats.parquet"
    if not stats_path.is_file():
        return report | {"findings": []}, None, tokens
    stats = validate_table(ExampleStats, pl.read_parquet(stats_path), str(stats_path))
    kept = stats.filter(pl.col("dropped").is_null()).with_columns(pl.col("tokens", "trained_tokens").cast(pl.Int64))
    kept = kept.with_columns(pl.col("source").fill_null(pl.col("input")), pl.lit(0, pl.Int64).alias("trained_beyond_max"))
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
                              _where(stats, pl.col("dropped") == reason, cfg),
                              "see the manifest's first_drops"))
    if report["counts"]["truncated"]:
        found.append(_finding("answers_truncated", report["counts"]["truncated"], total,
                              f"examples truncated to max_length {cfg.max_length}",
                              _where(stats, pl.col("truncated"), cfg)))
    if kept.height:
        median = float(kept["tokens"].median())
        mask = (pl.col("tokens") > median * cfg.extreme_factor) | (pl.col("tokens") < median / cfg.extreme_factor)
        n = int(kept.select(mask.sum()).item())
        if n:
            found.append(_finding("extreme_lengths", n, total, f"examples over {cfg.extreme_factor:g}x or under "
                                  f"1/{cfg.extreme_factor:g} of the median length ({median:g} tokens)",
                                  _where(kept, mask, cfg, "{} tokens", "tokens")))
    report["findings"] = sorted(found, key=lambda f: (-f["impact"], f["kind"]))
    return report, kept, tokens


