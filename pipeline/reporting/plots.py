"""Report, plots: static matplotlib (Agg) PNGs, inline in the page, one question each.

Every plot is small (5.2 x 3 inches at 110 dpi) with 11 pt text, so it stays legible when a phone
shows it 360 px wide; axes are labelled with their units.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import polars as pl

SIZE = (5.2, 3.0)
TRAINED, PROMPT, LIMIT, MARK = "#2e7d32", "#b0b0b0", "#c62828", "#555555"
MAX_BARS = 12
"""Sources drawn one bar each; the rest are summed into one bar."""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(height: float = SIZE[1]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.spines.top": False, "axes.spines.right": False})
    return plt.subplots(figsize=(SIZE[0], height))


def length_plot(tokens: np.ndarray, max_length: int) -> str:
    """Examples per length on a log axis, max_length and the p50/p90/p99 lengths marked."""
    fig, ax = _figure()
    low, high = max(1, int(tokens.min())), max(2, int(tokens.max()), max_length)
    ax.hist(tokens, bins=np.geomspace(low, high * 1.01, 40), color="#4477aa")
    ax.set_xscale("log")
    for q, style in ((50, ":"), (90, "-."), (99, "--")):
        ax.axvline(np.percentile(tokens, q), color=MARK, linestyle=style, label=f"p{q} {np.percentile(tokens, q):,.0f}")
    ax.axvline(max_length, color=LIMIT, linewidth=2, label=f"max_length {max_length:,}")
    ax.set(xlabel="tokens per example (log scale)", ylabel="examples")
    ax.xaxis.set_major_formatter(_count_format())
    ax.legend(fontsize=9, frameon=False)
    return _png(fig)


def _top_sources(sources: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The MAX_BARS sources with the most tokens, the rest summed as 'N others'."""
    ranked = sorted(sources.items(), key=lambda item: -item[1].get("tokens", 0))
    top, rest = ranked[:MAX_BARS], ranked[MAX_BARS:]
    if rest:
        top.append((f"{len(rest)} others", {key: sum(e[key] for _, e in rest) for key in ("tokens", "trained_tokens")}))
    return top[::-1]  # barh draws bottom-up


def trained_share_plot(sources: dict[str, dict[str, Any]]) -> str:
    """Per source, the share of its tokens that is trained (%)."""
    top = _top_sources(sources)
    fig, ax = _figure(1.2 + 0.32 * len(top))
    shares = [100 * e["trained_tokens"] / e["tokens"] if e["tokens"] else 0 for _, e in top]
    ax.barh([_short(name) for name, _ in top], shares, color=TRAINED)
    for y, share in enumerate(shares):
        ax.text(min(share, 80) + 1, y, f"{share:.0f}%", va="center", fontsize=9)
    ax.set(xlim=(0, 100), xlabel="trained share of the source's tokens (%)")
    return _png(fig)


def tokens_plot(sources: dict[str, dict[str, Any]]) -> str:
    """Per source, its tokens: trained and prompt stacked."""
    top = _top_sources(sources)
    fig, ax = _figure(1.4 + 0.32 * len(top))
    names = [_short(name) for name, _ in top]
    trained = np.array([e["trained_tokens"] for _, e in top])
    prompt = np.array([e["tokens"] for _, e in top]) - trained
    ax.barh(names, trained, color=TRAINED, label="trained")
    ax.barh(names, prompt, left=trained, color=PROMPT, label="prompt")
    ax.set(xlabel="tokens")
    ax.xaxis.set_major_formatter(_count_format())
    ax.legend(fontsize=9, frameon=False, loc="lower right")
    return _png(fig)


def fill_plot(row_tokens: np.ndarray, max_length: int) -> str:
    """Packed rows per fill (% of max_length)."""
    fig, ax = _figure()
    fill = 100 * row_tokens / max_length
    ax.hist(fill, bins=np.linspace(0, 100, 41), color="#888888")
    ax.axvline(fill.mean(), color=TRAINED, linestyle="--", label=f"mean {fill.mean():.1f}%")
    ax.set(xlim=(0, 100), xlabel=f"row fill (% of max_length {max_length:,})", ylabel="packed rows")
    ax.legend(fontsize=9, frameon=False, loc="upper left")
    return _png(fig)


def turns_plot(turns: pl.Series) -> str:
    """Conversations per number of messages; counts past the 99th percentile share one last bar."""
    fig, ax = _figure()
    values = turns.to_numpy()
    cap = max(2, int(np.percentile(values, 99)))
    clipped = np.minimum(values, cap + 1)
    numbers, counts = np.unique(clipped, return_counts=True)
    ax.bar(numbers, counts, color="#66aacc", width=0.8)
    ax.set_ylim(0, counts.max() * 1.12)  # every bar inside its axis
    ax.set_xlim(numbers.min() - 0.7, numbers.max() + 0.7)
    if values.max() > cap:
        ax.annotate(f"{cap + 1}+", (cap + 1, counts[-1]), ha="center", va="bottom", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="messages per conversation", ylabel="conversations")
    ax.yaxis.set_major_formatter(_count_format())
    return _png(fig)


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _count_format():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k" if v >= 1e3 else f"{v:g}")


def make_plots(frame: pl.DataFrame | None, sources: dict[str, dict[str, Any]] | None, max_length: int,
               row_tokens: np.ndarray | None, with_tokens: bool) -> dict[str, str]:
    """The plots the page places beside their sections (base64 PNGs).

    Returns:
        {"lengths", "trained_share", "tokens", "fill", "turns"}: those the data allows.
    """
    plots: dict[str, str] = {}
    if frame is not None and frame.height:
        if with_tokens:
            plots["lengths"] = length_plot(frame["tokens"].to_numpy(), max_length)
        plots["turns"] = turns_plot(frame["turns"])
    if sources and with_tokens:
        plots["trained_share"] = trained_share_plot(sources)
        plots["tokens"] = tokens_plot(sources)
    if row_tokens is not None and row_tokens.size:
        plots["fill"] = fill_plot(row_tokens, max_length)
    return plots
