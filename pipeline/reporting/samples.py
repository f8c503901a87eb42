"""The report's "What the model learns": a few conversations chosen to cover every source and the
findings, encoded by pack's own code (`masking.encode_batch`) and shown token by token with
`sftpack inspect`'s code (`inspect.token_pieces`): trained tokens highlighted, prompt greyed,
special tokens boxed, each token's id on hover, a split conversation as its sequences.

While the scan streams, `SampleCandidates` keeps per finding kind the shortest example showing it,
and per source (the first MAX_SOURCES) its first PER_SOURCE examples of at most GOOD_LENGTH tokens (else the
shortest); `choose` then takes the top findings' examples and one per source not yet covered.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftpack.reporting.inspect import Piece, token_pieces
from sftpack.reporting.kinds import KINDS

SAMPLES = 8
"""Conversations shown; up to MAX_SOURCES when more sources need covering."""
MAX_SOURCES = 12
PER_SOURCE = 4
"""Examples kept per source, to fill the samples when the findings are few."""
GOOD_LENGTH = 600
"""A source's sample is its first example with at most this many tokens (readable at a glance)."""
UNTRAINED = ("tool_calls_not_rendered",)
"""Audit kinds whose turns stay untrained (grey) in the samples."""
SHOWN_TOKENS = 1500
"""Tokens shown per sequence; the rest is counted, not shown (keeps the page small)."""


@dataclass(frozen=True)
class Candidate:
    index: int
    """1-based example index in the examples table."""
    where: str
    """`file:line`."""
    source: str
    record: dict
    tokens: int


class SampleCandidates:
    """Examples worth showing, kept while the scan streams (a few records, whatever the input size)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, Candidate] = {}
        self.by_source: dict[str, list[Candidate]] = {}
        """Per source its first PER_SOURCE examples of at most GOOD_LENGTH tokens (else the shortest)."""

    def offer(self, index: int, where: str, source: str, record: dict, tokens: int, kinds: list[str]) -> None:
        """Keep this example if it is the shortest of one of its finding `kinds`, or one of its source's."""
        candidate = None
        for kind in kinds:
            held = self.by_kind.get(kind)
            if held is None or tokens < held.tokens:
                candidate = candidate or Candidate(index, where, source, record, tokens)
                self.by_kind[kind] = candidate
        held = self.by_source.get(source)
        if held is None:
            if len(self.by_source) < MAX_SOURCES:
                self.by_source[source] = [candidate or Candidate(index, where, source, record, tokens)]
        elif len(held) < PER_SOURCE and tokens <= GOOD_LENGTH:
            held.append(candidate or Candidate(index, where, source, record, tokens))
        elif held[-1].tokens > GOOD_LENGTH and tokens < held[-1].tokens:
            held[-1] = candidate or Candidate(index, where, source, record, tokens)

    def choose(self, ranked_kinds: list[str]) -> list[tuple[Candidate, list[str]]]:
        """About SAMPLES examples: the top findings' (in rank order), one of every source, then more
        findings', then more of each source in turn.

        Returns:
            [(candidate, why it is shown: finding titles and/or "source X")], the top finding's first.
        """
        chosen: dict[int, tuple[Candidate, list[str]]] = {}

        def take(candidate: Candidate, why: str, limit: int) -> None:
            if candidate.index in chosen:
                chosen[candidate.index][1].append(why)
            elif len(chosen) < limit:
                chosen[candidate.index] = (candidate, [why])

        kinds = [kind for kind in ranked_kinds if kind in self.by_kind]
        for kind in kinds[: SAMPLES // 2]:
            take(self.by_kind[kind], KINDS[kind].title, SAMPLES)
        for source, candidates in self.by_source.items():
            if all(c.source != source for c, _ in chosen.values()):
                take(candidates[0], f"source {source}", max(SAMPLES, MAX_SOURCES))
        for kind in kinds[SAMPLES // 2:]:
            take(self.by_kind[kind], KINDS[kind].title, SAMPLES)
        for rank in range(1, PER_SOURCE):
            for source, candidates in self.by_source.items():
                if rank < len(candidates) and candidates[rank].index not in chosen:
                    take(candidates[rank], f"source {source}", SAMPLES)
        return list(chosen.values())


def sample_views(encoder: Any, chosen: list[tuple[Candidate, list[str]]]) -> list[dict[str, Any]]:
    """The chosen examples encoded as pack encodes them, as token pieces per sequence.

    Args:
        encoder: the report's encoder (tokenizer, renderer, mask options: scan._Encoder).
        chosen: SampleCandidates.choose's answer.

    Returns:
        Per example {where, source, why, audit, sequences: [{tokens, trained_tokens, pieces}]};
        `pieces` (inspect.Piece) holds at most SHOWN_TOKENS tokens.
    """
    examples = encoder.encode_examples([candidate.record for candidate, _ in chosen]) if chosen else []
    views = []
    for (candidate, why), example in zip(chosen, examples):
        sequences = []
        for sequence in example.sequences:
            pieces = token_pieces(encoder.tokenizer, sequence.input_ids[:SHOWN_TOKENS],
                                  sequence.labels[:SHOWN_TOKENS])
            sequences.append({"tokens": int(sequence.input_ids.size),
                              "trained_tokens": int((sequence.labels != -100).sum()), "pieces": pieces})
        views.append({"where": candidate.where, "source": candidate.source, "why": why,
                      "audit": dict(example.audit), "sequences": sequences})
    return views


def samples_json(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What report.json keeps of the samples: where, why, and each sequence's token counts."""
    return [{"where": v["where"], "source": v["source"], "why": v["why"], "audit": v["audit"],
             "sequences": [{"tokens": s["tokens"], "trained_tokens": s["trained_tokens"]} for s in v["sequences"]]}
            for v in views]


def _pieces_html(pieces: list[Piece]) -> str:
    """Runs of trained (`tr`) and prompt (`pr`) tokens; each token a span with its ids as title."""
    parts, inside = [], None
    for piece in pieces:
        if piece.trained != inside:
            parts.append(("</span>" if inside is not None else "") + f"<span class={'tr' if piece.trained else 'pr'}>")
            inside = piece.trained
        ids = " ".join(map(str, piece.token_ids))
        special = " class=sp" if piece.special else ""
        parts.append(f"<span{special} title=\"{ids}\">{html.escape(piece.text)}</span>")
    return "".join(parts) + ("</span>" if inside is not None else "")


def samples_html(views: list[dict[str, Any]]) -> str:
    """The samples section's body: a legend, then per example its header and sequences."""
    if not views:
        return "<p class=muted>no samples: give a tokenizer (--tokenizer or --config) to see the masks</p>"
    parts = ["<p class=legend><span class=tr>trained (highlighted)</span> <span class=pr>prompt, not trained"
             "</span> <span class=sp>special token</span> · hover a token for its id</p>"]
    for view in views:
        notes = [f"{KINDS[k].title.lower()}: {n}" + (" (left grey: not trained)" if k in UNTRAINED else "")
                 for k, n in view["audit"].items() if k in KINDS]
        parts.append(f"<div class=sample><p class=shead><b><code>{html.escape(view['where'])}</code></b> · source "
                     f"{html.escape(view['source'])} · shown for: {html.escape('; '.join(view['why']))}"
                     + (f"<br><span class=warn>{html.escape('; '.join(notes))}</span>" if notes else "") + "</p>")
        count = len(view["sequences"])
        for number, sequence in enumerate(view["sequences"], start=1):
            shown = sum(len(p.token_ids) for p in sequence["pieces"])
            head = f"sequence {number} of {count}: " if count > 1 else ""
            rest = f" (first {shown:,} shown)" if shown < sequence["tokens"] else ""
            parts.append(f"<p class=seq>{head}{sequence['tokens']:,} tokens, {sequence['trained_tokens']:,} "
                         f"trained{rest}</p><pre class=toks>{_pieces_html(sequence['pieces'])}</pre>")
        parts.append("</div>")
    return "\n".join(parts)


def packed_views(packed: Any, frame: Any, tokenizer_path: str | None) -> list[dict[str, Any]]:
    """Samples of a packed folder as `sftpack inspect` shows its rows: from the first rows, the
    first sequence of each source, then the next sequences, SAMPLES in all.

    Args:
        packed: the PackedFolder.
        frame: its stats table of kept examples (example_id, source), or None.
        tokenizer_path: a tokenizer folder; None: the manifest's.

    Returns:
        sample_views' shape; [] when the tokenizer cannot be loaded.
    """
    from sftpack.errors import SftpackError
    from sftpack.reporting.inspect import load_tokenizer

    try:
        tokenizer = load_tokenizer(packed.path, packed.manifest, tokenizer_path)
    except SftpackError:
        return []
    rows = packed.dataset().data.table.slice(0, 64).to_pylist()
    source_of = dict(zip(frame["example_id"].to_list(), frame["source"].to_list())) if frame is not None else {}
    spans = []  # (row, example id, start, stop) in row order
    for number, row in enumerate(rows):
        starts = np.concatenate([[0], np.cumsum(row["seq_lengths"])]).tolist()
        spans += [(number, eid, a, b) for eid, a, b in zip(row["example_ids"], starts[:-1], starts[1:])]
    firsts: dict[str, tuple] = {}
    for span in spans:
        firsts.setdefault(source_of.get(span[1], ""), span)
    picked = list(firsts.values())[:SAMPLES]
    picked += [span for span in spans if span not in picked][: SAMPLES - len(picked)]
    views = []
    for number, eid, start, stop in sorted(picked):
        ids, labels = np.asarray(rows[number]["input_ids"][start:stop]), np.asarray(rows[number]["labels"][start:stop])
        pieces = token_pieces(tokenizer, ids[:SHOWN_TOKENS], labels[:SHOWN_TOKENS])
        views.append({"where": f"row {number}, example {eid}", "source": source_of.get(eid, "-"),
                      "why": [f"packed row {number}"], "audit": {},
                      "sequences": [{"tokens": int(ids.size), "trained_tokens": int((labels != -100).sum()),
                                     "pieces": pieces}]})
    return views
