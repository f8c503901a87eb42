"""The recipe's built-in filters: each a rule with a threshold, each removal counted as `filter_<name>`.

    records (one batch) ──empty_answer, answer_equals_prompt, empty_think (per record)
                       ──script (polars, the whole batch), tokens (one tokenizer batch call)──> reason or None

Token counts are of the message text (every turn's content, no template), so they do not depend
on a chat template; they are what `filters.min_tokens`/`max_tokens` bound and the manifest sums.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError
from sftpack.mixing.recipe import FilterConfig
from sftpack.mixing.text import turn_text

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def _empty_answer(record: dict[str, Any]) -> bool:
    return any(m["role"] == "assistant" and not m.get("tool_calls") and not str(m.get("content") or "").strip()
               for m in record["messages"])


def _answer_equals_prompt(record: dict[str, Any]) -> bool:
    previous = None
    for message in record["messages"]:
        content = str(message.get("content") or "").strip()
        if message["role"] == "assistant" and previous is not None and content and content == previous:
            return True
        previous = content if message["role"] == "user" else previous
    return False


def _empty_think(record: dict[str, Any]) -> bool:
    """True when the last answer carries no reasoning: neither reasoning_content nor a non-empty <think>."""
    answers = [m for m in record["messages"] if m["role"] == "assistant"]
    if not answers:
        return True
    last = answers[-1]
    if str(last.get("reasoning_content") or "").strip():
        return False
    found = _THINK.search(str(last.get("content") or ""))
    return found is None or not found.group(1).strip()


def load_token_counter(folder: str) -> Any:
    """The tokenizer folder's fast tokenizer (tokenizer.json), for batched counts.

    Raises:
        SftpackError: no tokenizer.json in the folder.
    """
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise SftpackError(f"tokenizer: {path} not found; give a folder with a fast tokenizer (tokenizer.json)")
    return Tokenizer.from_file(str(path))


class Filters:
    """The recipe's filters, applied to one batch of schema-valid records at a time."""

    def __init__(self, cfg: FilterConfig, tokenizer: str | None):
        self.cfg = cfg
        self.tokenizer = load_token_counter(tokenizer) if tokenizer else None
        self.rules = [(name, rule) for name, on, rule in (
            ("empty_answer", cfg.empty_answer, _empty_answer),
            ("answer_equals_prompt", cfg.answer_equals_prompt, _answer_equals_prompt),
            ("empty_think", cfg.require_reasoning, _empty_think),
        ) if on]

    def tokens(self, records: list[dict[str, Any]]) -> list[int] | None:
        """Tokens of each record's message text (one batched call), or None without a tokenizer."""
        if self.tokenizer is None:
            return None
        encodings = self.tokenizer.encode_batch([turn_text(r) for r in records], add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def reasons(self, records: list[dict[str, Any]], tokens: list[int] | None) -> list[str | None]:
        """`filter_<name>` of the first filter each record fails (in the order listed), or None."""
        out: list[str | None] = []
        for record in records:
            out.append(next((f"filter_{name}" for name, rule in self.rules if rule(record)), None))
        if tokens is not None:
            low, high = self.cfg.min_tokens, self.cfg.max_tokens
            for i, count in enumerate(tokens):
                if out[i] is None and low is not None and count < low:
                    out[i] = "filter_min_tokens"
                elif out[i] is None and high is not None and count > high:
                    out[i] = "filter_max_tokens"
        if self.cfg.scripts is not None:
            from sftpack.checks.scripts import dominant_scripts

            for i, script in enumerate(dominant_scripts([turn_text(r) for r in records])):
                if out[i] is None and script not in self.cfg.scripts:
                    out[i] = "filter_script"
        return out
