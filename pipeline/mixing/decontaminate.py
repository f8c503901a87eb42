"""Decontamination: a training record is contaminated when it shares a word n-gram with a benchmark
item (or one of the recipe's own eval records), unless that n-gram is boilerplate.

    benchmark files (any container) ──item_text──words──n-grams──> index: n-gram -> (items holding it, first item)
    training record ──turn_text──words──n-grams (in order)──> the first indexed n-gram held by at
                                                              most max_ngram_df items, or none

Text is lowercased and every run of punctuation and whitespace is one separator, so a benchmark
question with its case and punctuation changed, or embedded in a longer prompt, still matches.
An item shorter than `ngram` words has no n-gram and is matched only as an exact eval copy
(pipeline/mixing/clean.py). Memory: the benchmarks' n-grams, never the training data's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from sftpack.errors import SftpackError
from sftpack.mixing.recipe import Benchmark
from sftpack.mixing.text import item_text, ngrams, words


def benchmark_files(bench: Benchmark) -> tuple[list[Path], Path | None]:
    """The data files a benchmark path (file, folder or glob) names, and the folder they are under."""
    from sftpack.io.containers import locate_glob, locate_path

    if Path(bench.path).exists():
        _, files, root = locate_path(bench.path, bench.split)
        return files, root
    return locate_glob(bench.path)


def benchmark_items(bench: Benchmark) -> Iterator[tuple[str, str]]:
    """(item id, text) of every item of a benchmark file, folder or glob, in any container.

    The id is the record's `id` when it has one, else `file:line` (JSONL) or `file row N`.

    Raises:
        SftpackError: the path cannot be read, or no record has a field the text can come from.
    """
    from sftpack.io.containers import file_items

    files, root = benchmark_files(bench)
    found = 0
    for path in files:
        label = str(path.relative_to(root)) if root is not None and path != root else path.name
        for number, raw, record, error in file_items(path):
            if record is None:
                continue
            text = item_text(record, bench.field)
            if text is None:
                continue
            found += 1
            yield str(record.get("id") or (f"{label}:{number}" if raw is not None else f"{label} row {number}")), text
    if not found:
        raise SftpackError(f"decontaminate.benchmarks {bench.path}: no item with a messages, question, prompt, "
                           f"problem or text field; name the field holding the text (field: ...)", exit_code=2)


class NgramIndex:
    """The benchmark side: every item's distinct n-grams, how many items hold each, and the first."""

    def __init__(self, n: int, max_df: int):
        self.n, self.max_df = n, max_df
        self.first: dict[str, tuple[str, str]] = {}
        self.df: dict[str, int] = {}
        self.starts: set[str] = set()  # first words of indexed n-grams: most windows are skipped unjoined
        self.items: dict[str, int] = {}

    def add(self, benchmark: str, item: str, text: str) -> None:
        """Index one item's distinct n-grams."""
        self.items[benchmark] = self.items.get(benchmark, 0) + 1
        for gram in set(ngrams(words(text), self.n)):
            self.df[gram] = self.df.get(gram, 0) + 1
            self.first.setdefault(gram, (benchmark, item))
            self.starts.add(gram.split(" ", 1)[0])

    def add_benchmark(self, bench: Benchmark) -> None:
        for item, text in benchmark_items(bench):
            self.add(bench.path, item, text)

    def match(self, tokens: list[str]) -> dict[str, Any] | None:
        """The first n-gram of a record's words (`words(turn_text(record))`, in text order) that a
        benchmark item holds and that is not boilerplate, as {benchmark, item, ngram}; None when none."""
        if not self.first:
            return None
        for i in range(len(tokens) - self.n + 1):
            if tokens[i] not in self.starts:
                continue
            gram = " ".join(tokens[i:i + self.n])
            hit = self.first.get(gram)
            if hit is not None and self.df[gram] <= self.max_df:
                return {"benchmark": hit[0], "item": hit[1], "ngram": gram}
        return None
