"""Packed rows decoded back to text, trained tokens highlighted: the first look when a mask is in doubt.

One packed row (see pipeline/store/shards.py) printed as:

    ══ row 3: 245/256 tokens, 2 sequences, 61 trained ══
    ── example ex-7 (120 tokens, 40 trained) ──
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    [[Hello!<|im_end|>]]
    ── example ex-2 (125 tokens, 21 trained) ──
    ...

Trained tokens (label != -100) are wrapped in `[[...]]`, or shown in bold green with ANSI
colour. Each run of consecutive tokens with the same mask is decoded on its own, so a
multi-byte character split across a mask boundary may show as a replacement character.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sftpack.errors import SftpackError
from sftpack.templates.masking import IGNORE_INDEX
from sftpack.templates.trained_text import ANSI_CLOSE, ANSI_OPEN, CLOSE, OPEN, decode, mark_trained, mask_runs
from sftpack.store.packed_folder import MANIFEST, PackedFolder



@dataclass(frozen=True)
class InspectConfig:
    row: int | None = None
    """Packed row to print (0-based); None with no example: row 0."""
    example: str | None = None
    """Print only this example's sequence (and the header of the row holding it)."""
    color: bool = False
    """ANSI colour for trained tokens instead of [[...]] brackets."""
    tokenizer: str | None = None
    """Tokenizer folder; None: the one the manifest records (tokenizer.name_or_path)."""

    def __post_init__(self) -> None:
        if self.row is not None and self.example is not None:
            raise SftpackError("give --row or --example, not both")
        if self.row is not None and self.row < 0:
            raise SftpackError(f"--row {self.row}: rows are numbered from 0")


@dataclass(frozen=True)
class Piece:
    """One token as text (or a few tokens, where one alone is not whole UTF-8), or a whole run of
    tokens where per-token text would not add up to the run's decoding."""

    text: str
    token_ids: tuple[int, ...]
    trained: bool
    special: bool
    """A special token of the tokenizer (`<|im_end|>`): shown as such."""


def _token_texts(tokenizer: Any, ids: list[int], trained: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    """Each token decoded alone; a token whose text alone holds a replacement character is
    joined with the next ones (up to 4, same mask) until the UTF-8 is whole."""
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    out, i = [], 0
    while i < len(ids):
        j, text = i + 1, texts[i]
        while "\ufffd" in text and j < len(ids) and j - i < 4 and trained[j] == trained[i]:
            j += 1
            text = tokenizer.decode(ids[i:j], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if "\ufffd" in text and j > i + 1:  # a real replacement character: the token alone
            j, text = i + 1, texts[i]
        out.append((text, tuple(ids[i:j])))
        i = j
    return out


def token_pieces(tokenizer: Any, input_ids: np.ndarray, labels: np.ndarray) -> list[Piece]:
    """The tokens of one sequence as text, with their mask: what `inspect` prints and the report shows.

    Each run of consecutive tokens with the same mask decodes to exactly what decoding the run at
    once gives; where the tokens' own texts do not add up to it (a tokenizer that decodes by
    context), the run is one piece.

    Args:
        tokenizer: a transformers tokenizer.
        input_ids: int (n,) token ids.
        labels: int (n,) labels, -100 where not trained.

    Returns:
        The pieces in order; their texts joined are the sequence decoded run by run.
    """
    trained = np.asarray(labels) != IGNORE_INDEX
    ids = np.asarray(input_ids).tolist()
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    pieces: list[Piece] = []
    for start, stop in mask_runs(trained):
        run_text = decode(tokenizer, ids[start:stop])
        texts = _token_texts(tokenizer, ids[start:stop], trained[start:stop])
        if "".join(text for text, _ in texts) != run_text:
            texts = [(run_text, tuple(ids[start:stop]))]
        flag = bool(trained[start])
        pieces += [Piece(text, run, flag, len(run) == 1 and run[0] in special) for text, run in texts]
    return pieces


def load_tokenizer(folder: Path, manifest: dict[str, Any], override: str | None) -> Any:
    """The tokenizer the folder was packed with (manifest tokenizer.name_or_path) or `override`.

    Raises:
        SftpackError: the manifest names none, or the folder is missing or not a tokenizer.
    """
    from sftpack.templates.tokenizer import load_tokenizer as load

    path = override or (manifest.get("tokenizer") or {}).get("name_or_path")
    if not path:
        raise SftpackError(f"{folder / MANIFEST}: records no tokenizer.name_or_path; pass --tokenizer PATH")
    where = "--tokenizer" if override else f"{folder / MANIFEST} tokenizer.name_or_path"
    if not Path(path).exists():
        raise SftpackError(f"{path}: tokenizer folder not found ({where}); pass --tokenizer PATH to the folder "
                           "the rows were packed with")
    return load(path, where)


def format_row(tokenizer: Any, row: dict[str, Any], index: int, max_length: int | None, color: bool,
               only: str | None = None) -> str:
    """One packed row as text: a row header, then per sequence a boundary line and its text.

    Args:
        tokenizer: decodes the ids.
        row: {"input_ids", "labels", "seq_lengths", "example_ids"} (lists).
        index: the row's number (for the header).
        max_length: the folder's max_length (shown in the header), or None.
        color: ANSI colour instead of brackets.
        only: print only the sequence of this example id.

    Returns:
        The text, ending with a newline.
    """
    ids, labels = np.asarray(row["input_ids"]), np.asarray(row["labels"])
    trained_total = int((labels != IGNORE_INDEX).sum())
    capacity = f"/{max_length}" if max_length else ""
    lines = [f"══ row {index}: {ids.size}{capacity} tokens, {len(row['seq_lengths'])} sequences, "
             f"{trained_total} trained ══"]
    start = 0
    for length, example_id in zip(row["seq_lengths"], row["example_ids"]):
        stop = start + int(length)
        if only is None or example_id == only:
            trained = int((labels[start:stop] != IGNORE_INDEX).sum())
            lines.append(f"── example {example_id} ({stop - start} tokens, {trained} trained) ──")
            lines.append(mark_trained(tokenizer, ids[start:stop], labels[start:stop], color).rstrip("\n"))
        start = stop
    return "\n".join(lines) + "\n"


def run(folder: str | Path, cfg: InspectConfig) -> str:
    """Decode a packed row (or the row holding one example) with trained tokens marked.

    Args:
        folder: a packed folder (manifest.json and Arrow shards).
        cfg: which row or example, colour, tokenizer override.

    Returns:
        The text to print.

    Raises:
        SftpackError: not a packed folder, no such row or example, tokenizer missing.
    """
    folder = Path(folder)
    packed = PackedFolder.at(folder)
    if packed is None:
        raise SftpackError(f"{folder}: no readable {MANIFEST}; give a packed folder (out/packed/<fingerprint>)")
    tokenizer = load_tokenizer(folder, packed.manifest, cfg.tokenizer)
    try:
        dataset = packed.dataset()
    except (OSError, ValueError) as err:
        raise SftpackError(f"{folder}: cannot open the packed rows: {err}") from None
    index = cfg.row or 0
    if cfg.example is not None:
        ids_column = dataset.data.table.column("example_ids").to_pylist()
        found = [i for i, ids in enumerate(ids_column) if cfg.example in ids]
        if not found:
            raise SftpackError(f"{folder}: no example {cfg.example!r} in the {len(ids_column)} rows "
                               "(dropped examples are listed in stats.parquet)")
        index = found[0]
    if index >= dataset.num_rows:
        raise SftpackError(f"{folder}: --row {index} out of range; the folder has {dataset.num_rows} rows (0.."
                           f"{dataset.num_rows - 1})")
    max_length = packed.options.get("max_length")
    return format_row(tokenizer, dataset[index], index, max_length, cfg.color, cfg.example)
