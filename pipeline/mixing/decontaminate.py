"""Decontamination: a training record is contaminated when it is (nearly) the same conversation as one
of the recipe's eval records, or when its dialogue holds a word n-gram of a benchmark item that is
evidence, not boilerplate.

    eval record ──dialogue_text──words──shingles──> EvalIndex (mixing.dedup.NearDuplicates: MinHash-LSH
                                                    proposes, the exact Jaccard decides, at dedup.near's
                                                    threshold, 0.8 without `near:`)
    benchmark item ──item_text──words──n-grams──> NgramIndex: n-gram -> (items holding it, first item)
    every source's dialogue ──the indexed n-grams it holds, per distinct dialogue──> boilerplate: held by
                                                    more than max_ngram_df items, or by more than
                                                    max_ngram_df and boilerplate_share of one source's
                                                    distinct dialogues
    training record ──dialogue_text──words──> Contamination.matches: the eval record it nearly is
                                              {benchmark: eval/<source>, item, jaccard}, else the first
                                              indexed n-gram that is not boilerplate {benchmark, item, ngram}

Only the dialogue (user turns and answers) is compared: a system prompt or a persona shared by every
row is the data's shape, not a leak. Text is lowercased and every run of punctuation and whitespace
is one separator, so a benchmark question with its case and punctuation changed, or embedded in a
longer prompt, still matches. Memory: the benchmarks' n-grams and the eval records' shingle hashes,
never the training data's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from sftpack.errors import SftpackError
from sftpack.mixing.recipe import Benchmark, NearDedup
from sftpack.mixing.text import item_text, ngrams, shingles, words


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
        self.boilerplate: set[str] = set()
        """Indexed n-grams common in the training data itself (`mark_training_boilerplate`): never evidence."""

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

    def held(self, tokens: list[str]) -> set[str]:
        """The indexed n-grams among a text's words."""
        return {gram for i in range(len(tokens) - self.n + 1) if tokens[i] in self.starts
                for gram in (" ".join(tokens[i:i + self.n]),) if gram in self.first}

    def match(self, tokens: list[str]) -> dict[str, Any] | None:
        """The first n-gram of a record's dialogue words (in text order) that a benchmark item holds
        and that is not boilerplate, as {benchmark, item, ngram}; None when none."""
        if not self.first:
            return None
        for i in range(len(tokens) - self.n + 1):
            if tokens[i] not in self.starts:
                continue
            gram = " ".join(tokens[i:i + self.n])
            hit = self.first.get(gram)
            if hit is not None and self.df[gram] <= self.max_df and gram not in self.boilerplate:
                return {"benchmark": hit[0], "item": hit[1], "ngram": gram}
        return None


class EvalIndex:
    """The recipe's eval records, for the near-duplicate search (mixing.dedup.NearDuplicates) of
    training dialogues against them, on their shingles less the boilerplate ones. Pickled (to Ray
    tasks) without its LSH, which each process builds once from the shingles."""

    def __init__(self, cfg: NearDedup):
        self.cfg = cfg
        self.names: list[tuple[str, str]] = []  # (eval/<source>, record id)
        self.sets: list[list[str]] = []
        self.vocabulary: set[str] = set()
        self.boilerplate: set[str] = set()
        """Eval shingles common in the training data itself (Contamination.mark_boilerplate): never evidence."""
        self._near: Any = None

    def add(self, benchmark: str, item: str, tokens: list[str]) -> None:
        """One eval record, by its dialogue words."""
        self.names.append((benchmark, item))
        self.sets.append(shingles(tokens, self.cfg.ngram))
        self.vocabulary.update(self.sets[-1])

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_near": None, "vocabulary": set()}

    def _evidence(self, shingle_list: list[str]) -> list[str]:
        return [s for s in shingle_list if s not in self.boilerplate] if self.boilerplate else shingle_list

    def _built(self) -> Any:
        if self._near is None:
            from sftpack.mixing.dedup import NearDuplicates, shingle_hashes, signatures

            self._near = NearDuplicates(self.cfg)
            kept = [(i, found) for i, found in enumerate(map(self._evidence, self.sets)) if found]
            for (i, found), signature in zip(kept, signatures([found for _, found in kept], self.cfg)):
                self._near.add(signature, shingle_hashes(found), str(i))
        return self._near

    def matches(self, dialogues: list[list[str]]) -> list[dict[str, Any] | None]:
        """Per training dialogue (its words), the eval record it nearly is {benchmark, item, jaccard}, or None."""
        if not self.sets:
            return [None] * len(dialogues)
        from sftpack.mixing.dedup import shingle_hashes, signatures

        near = self._built()
        sets = [self._evidence(shingles(tokens, self.cfg.ngram)) for tokens in dialogues]
        asked = [i for i, found in enumerate(sets) if found]
        out: list[dict[str, Any] | None] = [None] * len(dialogues)
        for i, signature in zip(asked, signatures([sets[i] for i in asked], self.cfg) if asked else []):
            hit = near.find(signature, shingle_hashes(sets[i]))
            if hit is not None:
                benchmark, item = self.names[int(near.kept_ids[hit[0]])]
                out[i] = {"benchmark": benchmark, "item": item, "jaccard": hit[1]}
        return out


class Contamination:
    """Both lookups for a batch of training records: the eval records first, then the benchmarks."""

    def __init__(self, index: NgramIndex, evals: EvalIndex):
        self.index, self.evals = index, evals

    def mark_boilerplate(self, sources: Iterable[Iterable[list[str]]], share: float) -> None:
        """Mark the benchmark n-grams and eval shingles that more than max_ngram_df and more than
        `share` of one source's distinct dialogues hold (a system prompt, a signature, a persona's
        answer): they are the data's shape, not evidence of a leak.

        Args:
            sources: per source, each record's dialogue words.
            share: decontaminate.boilerplate_share.
        """
        if not self.index.first and not self.evals.sets:
            return
        n = self.evals.cfg.ngram
        for records in sources:
            seen: set[int] = set()
            grams: dict[str, int] = {}
            parts: dict[str, int] = {}
            for tokens in records:
                key = hash(" ".join(tokens))
                if key in seen:
                    continue
                seen.add(key)
                for gram in self.index.held(tokens) if self.index.first else ():
                    grams[gram] = grams.get(gram, 0) + 1
                for part in set(shingles(tokens, n)) & self.evals.vocabulary if self.evals.sets else ():
                    parts[part] = parts.get(part, 0) + 1
            bound = max(self.index.max_df, share * len(seen))
            self.index.boilerplate.update(gram for gram, count in grams.items() if count > bound)
            self.evals.boilerplate.update(part for part, count in parts.items() if count > bound)

    def matches(self, dialogues: list[list[str]]) -> list[dict[str, Any] | None]:
        """Per record (its dialogue words), why it is contaminated, or None."""
        return [found or self.index.match(tokens) for found, tokens in zip(self.evals.matches(dialogues), dialogues)]
