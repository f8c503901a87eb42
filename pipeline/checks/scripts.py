"""Which writing system a text is in: the script with the most letters (report's `script` column,
mix's script filter)."""

from __future__ import annotations

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
NO_SCRIPT = "none"


def dominant_scripts(texts: list[str]) -> list[str]:
    """Per text, the script with the most letters (`SCRIPTS` names), or "none".

    Args:
        texts: the texts, counted together in one polars column (vectorised).

    Returns:
        One script name per text.
    """
    if not texts:
        return []
    import numpy as np
    import polars as pl

    series = pl.Series(texts, dtype=pl.String)
    counts = np.stack([series.str.count_matches(pattern).to_numpy() for pattern in SCRIPTS.values()], axis=1)
    names = np.array(list(SCRIPTS), dtype=object)
    return np.where(counts.max(axis=1) > 0, names[counts.argmax(axis=1)], NO_SCRIPT).tolist()
