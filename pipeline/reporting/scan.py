"""Report, part 1: raw conversations -> the examples table (one row per valid example) and the
counts a scan accumulates (rejects per rule, roles, system prompts, tools, duplicates).

    inputs --readers, messages.first_reject (validate's checks)--> rejects counted per rule
           --encode_batch (template, mask, tokenize)--> template errors join the rejects
           --conversation_facts + token counts--> examples table (polars)

Definitions (also in report.json):
  - turns: messages in the conversation (system and tool messages included);
  - exact duplicate: messages and tools equal to an earlier valid example's (canonical JSON);
  - similar prompt: the first user message, lowercased with runs of punctuation and whitespace
    collapsed to one space, equals an earlier example's, and the conversation is not an exact
    duplicate;
  - script: the Unicode script with the most letters over all message contents;
  - source: the record's `source` field, else the name of the input file it came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sftpack.config.data_options import DEFAULT_MAX_LENGTH
from sftpack.config.data_options import problems as data_problems
from sftpack.errors import SftpackError
from sftpack.checks.conversation_key import conversation_hash
from sftpack.checks.messages import ROW_CHECKS, control_token_check, first_reject
from sftpack.checks.scripts import dominant_scripts
from sftpack.progress import progress_bar
from sftpack.reporting.samples import SampleCandidates
from sftpack.io.readers import InputSource, ReadOptions, Row
from sftpack.templates.masking import IGNORE_INDEX

PERCENTILES = (50, 90, 95, 99)
_PUNCT_SPACE = re.compile(r"[\W_]+")

EXAMPLE_SCHEMA = {
    "input": pl.String, "line": pl.Int64, "example_id": pl.String, "source": pl.String, "turns": pl.Int64,
    "tool_calls": pl.Int64, "has_system": pl.Boolean, "shortest_answer_chars": pl.Int64, "script": pl.String,
    "duplicate_of": pl.Int64, "similar_prompt_of": pl.Int64, "tokens": pl.Int64, "trained_tokens": pl.Int64,
    "trained_beyond_max": pl.Int64,
}


@dataclass(frozen=True)
class ReportConfig:
    tokenizer: str | None = None
    """Tokenizer (model) folder; None: no token statistics (raw JSONL) or the manifest's (packed)."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Row length the data would be packed to: over it, examples are dropped or truncated."""
    chat_template: str | None = None
    """Jinja template file replacing the tokenizer's own."""
    train_on: str = "all"
    """all: every assistant turn is trained; last: only the final one (as in pack)."""
    turns: str = "auto"
    """auto: split where the template renders a turn unlike at inference; whole: as rendered (as in pack)."""
    reasoning: str = "train"
    """Assistant reasoning: train, mask or drop (as in pack)."""
    truncation: str = "drop"
    """What pack would do with examples over max_length: drop or truncate."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Template arguments for every render (as in pack)."""
    stop_tokens: tuple[str, ...] | None = None
    """The tokens that end an assistant turn (as in pack)."""
    batch_size: int = 512
    """Conversations per tokenizer call."""
    examples: int = 10
    """Rows listed per finding and per reject rule."""
    short_answer_chars: int = 8
    """An assistant text answer shorter than this many characters (stripped) is a finding."""
    extreme_factor: float = 8.0
    """An example longer than factor x the median length, or shorter than median / factor, is extreme."""

    def __post_init__(self) -> None:
        problems = data_problems(dataclasses.asdict(self))
        if self.batch_size < 1 or self.examples < 0 or self.short_answer_chars < 0:
            problems.append("batch_size must be positive; examples and short_answer_chars 0 or more")
        if self.extreme_factor <= 1:
            problems.append(f"extreme_factor {self.extreme_factor}: must be above 1")
        if problems:
            raise SftpackError("options: " + "; ".join(problems))


# ---------------------------------------------------------------- one conversation -> facts

def prompt_key(text: str) -> int | None:
    """8-byte hash of a prompt lowercased with punctuation/whitespace runs collapsed; None if empty."""
    normal = _PUNCT_SPACE.sub(" ", text.lower()).strip()
    if not normal:
        return None
    return int.from_bytes(hashlib.blake2b(normal.encode("utf-8"), digest_size=8).digest(), signed=True)


def conversation_facts(record: dict[str, Any]) -> dict[str, Any]:
    """Counts of one schema-valid conversation (no tokenizer needed).

    Returns:
        turns, roles (Counter), tool_calls, has_tools, system (text or None),
        shortest_answer_chars (None when every assistant turn only calls tools), first_prompt.
    """
    messages = record["messages"]
    roles = Counter(m["role"] for m in messages)
    answers = [len(m["content"].strip()) for m in messages if m["role"] == "assistant" and not m.get("tool_calls")]
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return {
        "turns": len(messages),
        "roles": roles,
        "tool_calls": sum(len(m.get("tool_calls") or ()) for m in messages),
        "has_tools": bool(record.get("tools")),
        "system": system,
        "shortest_answer_chars": min(answers) if answers else None,
        "first_prompt": next((m["content"] for m in messages if m["role"] == "user"), ""),
    }


# ---------------------------------------------------------------- raw JSONL -> examples table

class _Encoder:
    """The tokenizer and renderer, loaded once (pack's loader: same template, same errors)."""

    def __init__(self, cfg: ReportConfig):
        from sftpack.templates.tokenizer import load_renderer

        self.tokenizer, self.renderer = load_renderer(cfg.tokenizer, cfg.chat_template,
                                                      template_kwargs=cfg.chat_template_kwargs,
                                                      stop_tokens=cfg.stop_tokens)
        from sftpack.templates.masking import MaskOptions

        self.options, self.max_length = MaskOptions(cfg.train_on, cfg.turns, cfg.reasoning), cfg.max_length

    def encode_examples(self, records: list[dict]) -> list:
        """Each record through masking's encode_batch (pack's code): a list of EncodedExample."""
        from sftpack.templates.masking import encode_batch

        conversations = [{"messages": r["messages"], "tools": r.get("tools"), "id": r.get("id"),
                          "chat_template_kwargs": r.get("chat_template_kwargs")} for r in records]
        return encode_batch(self.renderer, self.tokenizer, conversations, self.options)

    def encode(self, records: list[dict]) -> list[tuple[int, int, int, dict[str, int]] | str]:
        """Per record (tokens, trained tokens, trained tokens beyond max_length, masking's audit
        of it), or the error."""
        out: list[tuple[int, int, int, dict[str, int]] | str] = []
        for example in self.encode_examples(records):
            if example.error:
                out.append(f"{example.reason or 'template_error'}\t{example.error}")
                continue
            trained = [s.labels != IGNORE_INDEX for s in example.sequences]
            out.append((sum(t.size for t in trained), sum(int(t.sum()) for t in trained),
                        sum(int(t[self.max_length:].sum()) for t in trained), example.audit))
        return out


class _Scan:
    """Accumulates everything the report counts while lines stream by."""

    def __init__(self, cfg: ReportConfig):
        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.reason_lines: dict[str, list[str]] = {}
        self.reason_message: dict[str, str] = {}
        self.roles: Counter[str] = Counter()
        self.systems: Counter[str] = Counter()
        self.tools = Counter()
        self.first_conversation: dict[int, int] = {}  # conversation hash -> example index (1-based)
        self.first_prompt: dict[int, int] = {}
        self.audit_examples: Counter[str] = Counter()
        """Masking's audit keys -> conversations where the key counted (findings rank by these)."""
        self.audit_counts: Counter[str] = Counter()
        """Masking's audit keys -> their counts (turns, sequences) over every encoded conversation (a
        conversation masking refuses carries no audit)."""
        self.audit_rows: dict[str, list[str]] = {}
        """Masking's audit keys -> the first `examples` conversations' `file:line`."""
        self.candidates = SampleCandidates()

    def reject(self, where: str, rule: str, message: str) -> None:
        self.counts["rejected"] += 1
        self.reasons[rule] += 1
        lines = self.reason_lines.setdefault(rule, [])
        if len(lines) < self.cfg.examples:
            lines.append(where)
        self.reason_message.setdefault(rule, f"{where}: {message}")

    def add(self, where: tuple[str, str, int], record: dict, tokens: tuple[int, int, int, dict] | None,
            script: str) -> None:
        """Count one valid example; `where` is (input file name, example-id stem, line or row).
        Records without a `source` count under their input's file name."""
        input_name, stem, line = where
        facts = conversation_facts(record)
        index = len(self.rows) + 1
        key = conversation_hash(record)
        duplicate_of = self.first_conversation.setdefault(key, index)
        pkey = prompt_key(facts["first_prompt"])
        similar_of = self.first_prompt.setdefault(pkey, index) if pkey is not None else index
        self.roles.update(facts["roles"])
        if facts["system"] is not None:
            self.systems[facts["system"]] += 1
        self.tools["conversations_with_tools"] += facts["has_tools"]
        self.tools["conversations_with_tool_calls"] += facts["tool_calls"] > 0
        self.tools["tool_calls"] += facts["tool_calls"]
        self.tools["tool_results"] += facts["roles"]["tool"]
        source = str(record["source"]) if record.get("source") is not None else input_name
        if tokens is not None:
            self._audit(f"{input_name}:{line}", tokens[3])
            self.candidates.offer(index, f"{input_name}:{line}", source, record, tokens[0], [
                *tokens[3], *(["exact_duplicates"] if duplicate_of != index else []),
                *(["similar_prompts"] if similar_of != index and duplicate_of == index else []),
                *(["no_trained_tokens"] if tokens[1] == 0 else []),
                *(["too_long"] if tokens[0] > self.cfg.max_length else []),
                *(["answers_truncated"] if tokens[2] > 0 else []),
                *(["short_answers"] if _short(facts["shortest_answer_chars"], self.cfg) else [])])
        self.rows.append({
            "input": input_name, "line": line,
            "example_id": str(record["id"]) if record.get("id") is not None else f"{stem}:{line}",
            "source": source,
            "turns": facts["turns"], "tool_calls": facts["tool_calls"], "has_system": facts["system"] is not None,
            "shortest_answer_chars": facts["shortest_answer_chars"], "script": script,
            "duplicate_of": duplicate_of if duplicate_of != index else None,
            "similar_prompt_of": similar_of if similar_of != index else None,
            "tokens": tokens[0] if tokens else None, "trained_tokens": tokens[1] if tokens else None,
            "trained_beyond_max": tokens[2] if tokens else None,
        })

    def _audit(self, where: str, audit: dict[str, int]) -> None:
        """Count masking's audit of one conversation at `where` (`file:line`)."""
        for key, value in audit.items():
            self.audit_examples[key] += 1
            self.audit_counts[key] += value
            rows = self.audit_rows.setdefault(key, [])
            if len(rows) < self.cfg.examples:
                rows.append(where)


def _short(chars: int | None, cfg: ReportConfig) -> bool:
    return chars is not None and chars < cfg.short_answer_chars


def _valid_rows(rows: list[Row], checks: list, scan: _Scan) -> list[Row]:
    """The rows validate would keep; the others counted as rejects, blank lines as blank."""
    valid = []
    for row in rows:
        if row.blank:
            scan.counts["blank"] += 1
            continue
        scan.counts["lines"] += 1
        error = first_reject(row.record, row.error, checks)  # a line counts once, under its first rule
        if error is not None:
            scan.reject(row.where(), error.rule, f"{error.path or '(line)'} {error.message}")
        else:
            valid.append(row)
    return valid


def scan_jsonl(inputs: list[InputSource | Path], cfg: ReportConfig,
               encoder: _Encoder | None) -> tuple[pl.DataFrame, _Scan]:
    """Check, encode and describe every record of `inputs`, streamed in batches.

    Args:
        inputs: opened inputs (readers.open_input: any container and layout); a plain path is
            opened with the default ReadOptions.
        cfg: the options.
        encoder: the tokenizer and template; None for no token counts (and no control-token check).

    Returns:
        (examples table in EXAMPLE_SCHEMA, one row per valid example in input order; the scan
        with counts, reject rules, roles, system prompts and tool counts).
    """
    sources = [s if isinstance(s, InputSource) else ReadOptions().open(s) for s in inputs]
    checks = list(ROW_CHECKS) + ([control_token_check(encoder.tokenizer)] if encoder else [])
    scan = _Scan(cfg)
    for source in sources:
        with progress_bar(None, f"report: {source.name}", unit="ex") as bar:
            for rows in source.batches(cfg.batch_size, blanks=True):
                bar.update(len(rows))
                valid = _valid_rows(rows, checks, scan)
                encoded = encoder.encode([row.record for row in valid]) if encoder else [None] * len(valid)
                kept = []
                for row, tokens in zip(valid, encoded):
                    if isinstance(tokens, str):
                        rule, message = tokens.split("\t", 1)
                        scan.reject(row.where(), rule, message)
                    else:
                        kept.append(((row.file, source.example_stem(row.file), row.number), row.record, tokens))
                texts = ["\n".join(m["content"] for m in r["messages"]) for _, r, _ in kept]
                for (where, record, tokens), script in zip(kept, dominant_scripts(texts)):
                    scan.add(where, record, tokens, script)
    scan.counts["valid"] = len(scan.rows)
    return pl.DataFrame(scan.rows, schema=EXAMPLE_SCHEMA, orient="row") if scan.rows else \
        pl.DataFrame(schema=EXAMPLE_SCHEMA), scan


