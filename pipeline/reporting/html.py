"""Report, the page: one self-contained HTML file (inline CSS and PNGs, no script, nothing fetched).

    verdict (Ready to train / Train with care / Fix first, the reasons, the key numbers)
    findings, ranked (what, why it matters, rows to look at, the flag or key that changes it)
    what the model learns (samples.py: sampled conversations, trained tokens highlighted)
    lengths · sources · packing · conversations (each with its plot), then the remaining tables

Tables show human labels (LABELS); report.json keeps the machine keys.
"""

from __future__ import annotations

import html
from typing import Any

from sftpack.reporting.samples import samples_html

CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1040px;
 padding:14px;color:#1d1d1f;background:#fff}
h1{font-size:1.45em;margin:.2em 0}h2{font-size:1.2em;margin-top:1.8em;border-bottom:2px solid #e4e4e4}
h3{font-size:1em;margin:.2em 0}p{margin:.35em 0}code{font-size:.88em;overflow-wrap:anywhere}
.muted{color:#666}.verdict{border-radius:10px;padding:12px 16px;margin:10px 0;border:2px solid}
.verdict.fix{background:#fdecea;border-color:#c62828}.verdict.care{background:#fff6e0;border-color:#e09b00}
.verdict.ready{background:#e8f5e9;border-color:#2e7d32}.verdict .label{font-size:1.5em;font-weight:700}
.verdict ul{margin:.3em 0 .2em;padding-left:1.2em}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(110px,1fr));gap:8px;margin-top:10px}
.card{border:1px solid #ddd;border-radius:8px;padding:6px 10px;background:#fff}.card b{display:block;font-size:1.25em}
.finding{border:1px solid #ddd;border-left:6px solid #e09b00;border-radius:6px;padding:8px 12px;margin:10px 0}
.finding.fix{border-left-color:#c62828}.tag{font-size:.75em;font-weight:700;color:#fff;background:#e09b00;
 border-radius:4px;padding:1px 6px;vertical-align:middle}.fix .tag{background:#c62828}
.rows{display:flex;flex-wrap:wrap;gap:4px 10px;margin:.3em 0}.rows code{background:#f3f3f3;padding:0 4px}
summary{cursor:pointer;color:#0b57d0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:12px;align-items:start}
figure{margin:0}figcaption{font-size:.9em;color:#444}img{max-width:100%;height:auto;display:block}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.92em;margin:.4em 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f5f5f5}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.sample{border:1px solid #ddd;border-radius:8px;padding:6px 10px;margin:10px 0}.shead{font-size:.92em}
.seq{font-size:.85em;color:#444;margin-top:.5em}.warn{color:#b23c17;font-weight:600}
pre.toks{white-space:pre-wrap;overflow-wrap:anywhere;font:12.5px/1.5 ui-monospace,Menlo,Consolas,monospace;
 margin:4px 0;padding:6px;background:#fafafa;border-radius:4px;max-height:28em;overflow-y:auto}
.tr{background:#c8f0c8;color:#0b3d0b}.pr{color:#8a8a8a}
.sp{border:1px solid #7a5cc4;border-radius:3px;color:#5a3ea8;font-size:.92em}
.toks span span:hover{outline:2px solid #e07b00}.legend span{padding:0 4px;margin-right:4px}
@media (max-width:600px){body{font-size:14px;padding:8px}.grid{grid-template-columns:1fr}}
"""

LABELS = {
    "lines": "lines read", "blank": "blank lines", "valid": "valid examples", "rejected": "rejected lines",
    "examples": "examples", "tokens": "tokens", "trained_tokens": "trained tokens", "trained_share": "trained share",
    "over_max_length": "over max_length", "packing": "packing", "max_length": "max_length (tokens per row)",
    "truncation": "over max_length, pack will", "would_drop": "would be dropped", "would_truncate": "would be cut",
    "answers_beyond_max_length": "answers reaching past max_length", "no_trained_tokens": "examples with nothing trained",
    "rows": "packed rows", "lower_bound_rows": "fewest rows possible (tokens / max_length)",
    "l2_lower_bound_rows": "fewest rows possible (L2 bound)", "packing_efficiency": "packing efficiency",
    "sequences": "sequences", "fill_percentiles": "row fill percentiles", "packed": "packed examples",
    "truncated": "truncated examples", "dropped": "dropped examples", "per_conversation": "messages: conversations",
    "mean": "mean messages", "exact": "exact duplicates", "similar_prompts": "near-identical prompts",
    "conversations_with_tools": "conversations offering tools", "conversations_with_tool_calls":
    "conversations calling tools", "tool_calls": "tool calls", "tool_results": "tool results",
    "split_conversations": "conversations split into sequences", "split_extra_tokens": "prompt tokens repeated by splits",
    "reasoning_not_rendered": "reasoning turns the template drops", "tool_calls_not_rendered":
    "tool-call turns the template drops", "turns_rendered_differently": "turns trained unlike inference",
    "turns_without_stop": "turns without a stop token", "spans_with_role_header": "trained spans holding a role header",
    "conversation": "whole example", "prompt": "prompt (not trained)", "response": "trained part",
    "rule": "rule", "count": "count", "first": "first seen", "text": "system prompt", "conversations": "conversations",
    "distinct": "distinct",
}
SHARES = {"trained_share", "packing_efficiency"}


def label(key: str) -> str:
    """The human label of a report.json key."""
    return LABELS.get(key, key.replace("_", " "))


def _cell(value: Any, key: str = "") -> str:
    if isinstance(value, float):
        return f"{value:.1%}" if key in SHARES else f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{html.escape(label(str(k)))}: {_cell(v, str(k))}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return "<br>".join(f"<code>{html.escape(str(v))}</code>" for v in value) or "-"
    return html.escape("-" if value is None else str(value))


def _table(rows: list[dict[str, Any]], limit: int = 30) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(label(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f"<td{' class=n' if isinstance(row.get(c), (int, float)) else ''}>{_cell(row.get(c), c)}</td>"
        for c in columns) + "</tr>" for row in rows[:limit])
    more = f"<p class=muted>and {len(rows) - limit:,} more (report.json lists them all)</p>" if len(rows) > limit else ""
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>{more}"


def _pairs(mapping: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(label(str(k)))}</th><td class=n>{_cell(v, str(k))}</td></tr>"
                   for k, v in mapping.items())
    return f"<div class=scroll><table>{rows}</table></div>"


def _figure(plots: dict[str, str], key: str, caption: str) -> str:
    if key not in plots:
        return ""
    return (f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{plots[key]}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def key_numbers(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(number, what it counts, in words with its unit) for the verdict's cards."""
    counts, tokens, rows = report.get("counts") or {}, report.get("tokens"), report.get("rows")
    cards = [(f"{counts.get('valid', counts.get('examples', 0)):,}", "examples")]
    if tokens:
        cards += [(f"{tokens['tokens']:,}", "tokens"), (f"{tokens['trained_share']:.1%}", "of the tokens trained")]
    packing = rows or (tokens or {}).get("packing")
    if packing:
        kind = "packed rows" if rows else "packed rows (estimate)"
        cards.append((f"{packing['rows']:,}", f"{kind} of {report['options']['max_length']:,} tokens, "
                                              f"{packing['packing_efficiency']:.1%} full"))
    if "rejected" in counts:
        cards.append((f"{counts['rejected']:,}", "rejected lines"))
    if report.get("duplicates"):
        cards.append((f"{report['duplicates']['exact']:,}", "duplicate conversations"))
    if tokens:
        action = "dropped" if tokens["truncation"] == "drop" else "cut"
        cards.append((f"{tokens['over_max_length']:,}", f"examples over {tokens['max_length']:,} tokens ({action})"))
    return cards


def _verdict(report: dict[str, Any]) -> str:
    verdict = report["verdict"]
    css = {"Fix first": "fix", "Train with care": "care"}.get(verdict["label"], "ready")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in verdict["reasons"]) or "<li>no finding needs a look</li>"
    cards = "".join(f"<div class=card><b>{html.escape(n)}</b>{html.escape(what)}</div>" for n, what in key_numbers(report))
    return (f"<section id=verdict class=\"verdict {css}\"><div class=label>{html.escape(verdict['label'])}</div>"
            f"<ul>{reasons}</ul><div class=cards>{cards}</div></section>")


def _findings(found: list[dict[str, Any]]) -> str:
    if not found:
        return "<p>Nothing found that changes what the model learns.</p>"
    parts = []
    for f in found:
        tag = "Fix" if f["severity"] == "fix" else "Check"
        unit = "lines" if f["kind"] == "rejected" else "examples"
        rows = "".join(f"<code>{html.escape(r)}</code>" for r in f["rows"])
        parts.append(
            f"<div class=\"finding {f['severity']}\"><h3><span class=tag>{tag}</span> {html.escape(f['title'])}: "
            f"{f['count']:,} {unit} ({f['share']:.1%})</h3><p>{html.escape(f['explanation'])}.</p>"
            f"<p class=muted>{html.escape(f['message'])}</p><p><b>Change it:</b> {html.escape(f['advice'])}</p>"
            + (f"<details><summary>{len(f['rows'])} rows to look at</summary><div class=rows>{rows}</div></details>"
               if rows else "") + "</div>")
    return "".join(parts)


def _data_sections(report: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """Lengths, sources, packing and conversations, each with its plot."""
    parts, tokens = [], report.get("tokens")
    if tokens:
        table = _table([{"part": label(part)} | values for part, values in tokens["length_percentiles"].items()])
        parts += ["<h2 id=lengths>Lengths (tokens)</h2><div class=grid>",
                  _figure(plots, "lengths", "How long are the examples? Log scale; max_length in red."),
                  f"<div>{table}{_pairs({k: v for k, v in tokens.items() if k not in ('length_percentiles', 'packing')})}"
                  "</div></div>"]
    elif report["kind"] == "jsonl":
        parts.append("<h2>Tokens</h2><p class=muted>no tokenizer given (--tokenizer or --config): token statistics "
                     "skipped</p>")
    if report.get("sources"):
        rows = [{"source": s} | {k: v for k, v in e.items() if k != "packing"} for s, e in report["sources"].items()]
        parts += ["<h2 id=sources>Sources</h2>", _table(rows), "<div class=grid>",
                  _figure(plots, "trained_share", "How much of each source is trained?"),
                  _figure(plots, "tokens", "Where do the tokens come from?"), "</div>"]
    packing = report.get("rows") or (tokens or {}).get("packing")
    if packing:
        title = "Packed rows" if report.get("rows") else "Packing (estimate: as pack would pack)"
        parts += [f"<h2 id=packing>{title}</h2><div class=grid>",
                  _figure(plots, "fill", "How full are the packed rows?"), _pairs(packing), "</div>"]
    if report.get("turns"):
        parts += ["<h2 id=conversations>Conversations</h2><div class=grid>",
                  _figure(plots, "turns", "How many messages per conversation?"),
                  "<div>" + "".join(_pairs(report[key]) for key in ("roles", "tools") if report.get(key))
                  + f"<p>mean {report['turns']['mean']:g} messages per conversation</p></div></div>"]
    return parts


def _detail_sections(report: dict[str, Any]) -> list[str]:
    parts = []
    if report.get("mask_audit"):
        parts += ["<h2>Masks: will it stop</h2><p class=muted>split conversations and their extra tokens; turns whose "
                  "reasoning or tool calls the template does not render; turns or sequences that end in no stop "
                  "token; trained spans holding a role header (these last must be 0)</p>", _pairs(report["mask_audit"])]
    if report.get("rejected_reasons"):
        parts += ["<h2>Rejected lines by rule</h2>", _table([
            {"rule": r["rule"], "count": r["count"], "first seen": r["first"], "rows to look at": r["lines"]}
            for r in report["rejected_reasons"]])]
    for key, title in (("counts", "Counts"), ("duplicates", "Duplicates"), ("scripts", "Scripts (language mix)")):
        if report.get(key):
            parts += [f"<h2>{title}</h2>", _pairs(report[key])]
    if report.get("system_prompts"):
        sp = report["system_prompts"]
        parts += ["<h2>System prompts</h2>", _pairs({"conversations": sp["conversations"], "distinct": sp["distinct"]}),
                  _table(sp["top"])]
    return parts


def render_html(report: dict[str, Any], plots: dict[str, str], samples: list[dict[str, Any]]) -> str:
    """The report as one self-contained, phone-friendly HTML page (inline CSS and PNGs, no script).

    Args:
        report: what report.json holds, plus `inputs_label`.
        plots: make_plots' base64 PNGs by name.
        samples: samples.sample_views' examples (token pieces).
    """
    parts = [f"<h1>sftpack dataset report</h1><p class=muted>{html.escape(report['inputs_label'])} · sftpack "
             f"{html.escape(report['version'])}</p>", _verdict(report),
             "<h2 id=findings>Findings, by impact</h2>", _findings(report["findings"]),
             "<h2 id=samples>What the model learns</h2>", samples_html(samples),
             *_data_sections(report, plots), *_detail_sections(report)]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>sftpack report</title><style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
