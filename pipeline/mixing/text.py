"""The text mix compares: a conversation's turns as words, after lowercasing and collapsing
punctuation and whitespace, and their word n-grams.

    "What's 2+2?"  ──words──>  ["what", "s", "2", "2"]  ──ngrams(n=3)──>  {"what s 2", "s 2 2"}
"""

from __future__ import annotations

import re
from typing import Any, Iterable

_NOT_WORD = re.compile(r"[\W_]+")
PROMPT_ROLES = ("system", "user", "tool")


def words(text: str) -> list[str]:
    """Lowercased words: every run of punctuation, symbols and whitespace is one separator."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def turn_text(record: dict[str, Any], on: str = "all") -> str:
    """The conversation's text: every turn (`all`), the non-assistant turns (`prompt`) or the
    assistant turns (`response`), joined by newlines. Tool calls count as text of their turn."""
    parts = []
    for message in record["messages"]:
        is_answer = message["role"] == "assistant"
        if on == "all" or (on == "response") == is_answer:
            parts.append(str(message.get("content") or ""))
            if message.get("reasoning_content"):
                parts.append(str(message["reasoning_content"]))
            for call in message.get("tool_calls") or ():
                parts.append(str(call))
    return "\n".join(parts)


def ngrams(tokens: list[str], n: int) -> list[str]:
    """Word n-grams in order (repeats kept), each joined by one space; [] when fewer than n words."""
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def shingles(tokens: list[str], n: int) -> list[str]:
    """The word n-grams MinHash hashes (repeats kept: a signature is the same for a set and a multiset);
    a text shorter than n words is one shingle (itself)."""
    if len(tokens) < n:
        return [" ".join(tokens)]
    return ngrams(tokens, n)


def item_text(record: dict[str, Any], field: str | None) -> str | None:
    """A benchmark item's text: `field` when given, else messages, question, prompt, problem or text.

    Returns:
        The text, or None when the record has none of those fields.
    """
    if field is not None:
        value = record.get(field)
        return None if value is None else _flatten(value)
    if isinstance(record.get("messages"), list):
        return "\n".join(str(m.get("content") or "") for m in record["messages"] if isinstance(m, dict))
    for key in ("question", "prompt", "problem", "text"):
        if record.get(key) is not None:
            return _flatten(record[key])
    return None


def _flatten(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(_flatten(v) for v in value.values())
    if isinstance(value, Iterable):
        return "\n".join(_flatten(v) for v in value)
    return str(value)
