"""Which tokens a row trains, shown as text: each run of trained tokens (label != -100) decoded once
and wrapped in markers (`sftpack inspect`, the report's samples, `sftpack sanity`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sftpack.templates.masking import IGNORE_INDEX

OPEN, CLOSE = "[[", "]]"
ANSI_OPEN, ANSI_CLOSE = "\x1b[1;32m", "\x1b[0m"


def mask_runs(trained: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive tokens with the same mask, in order."""
    starts = np.concatenate([[0], np.flatnonzero(trained[1:] != trained[:-1]) + 1, [trained.size]]).tolist()
    return [(start, stop) for start, stop in zip(starts[:-1], starts[1:]) if start < stop]


def decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def mark_trained(tokenizer: Any, input_ids: np.ndarray, labels: np.ndarray, color: bool) -> str:
    """Decode `input_ids`, wrapping each run of trained tokens (label != -100) in markers.

    Args:
        tokenizer: a transformers tokenizer.
        input_ids: int (n,) token ids.
        labels: int (n,) labels, -100 where not trained.
        color: ANSI bold green instead of [[...]].

    Returns:
        The decoded text with markers.
    """
    # One decode per run (the text token_pieces' pieces add up to), without per-token decoding.
    opened, closed = (ANSI_OPEN, ANSI_CLOSE) if color else (OPEN, CLOSE)
    trained = np.asarray(labels) != IGNORE_INDEX
    ids = np.asarray(input_ids).tolist()
    parts = []
    for start, stop in mask_runs(trained):
        text = decode(tokenizer, ids[start:stop])
        parts.append(f"{opened}{text}{closed}" if trained[start] else text)
    return "".join(parts)
