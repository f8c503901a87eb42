"""Report, part 3: plots (matplotlib Agg, inline PNG) and the self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import polars as pl

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


