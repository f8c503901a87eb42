"""Progress bars: shown on a terminal only, so logs and CI output stay clean."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, unit: str = "ex"):
    """A tqdm bar on stderr when it is a terminal, else a silent one; bytes (`unit="B"`) are scaled."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", disable=not sys.stderr.isatty(),
                leave=False)
