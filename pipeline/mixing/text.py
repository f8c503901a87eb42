"""The text mix compares: a conversation's turns as words, after lowercasing and collapsing
punctuation and whitespace, and their word n-grams.

    "What's 2+2?"  ──words──>  ["what", "s", "2", "2"]  ──ngrams(n=3)──>  {"what s 2", "s 2 2"}

Deduplication compares the turns `dedup.near.on` names; decontamination compares the dialogue
(`dialogue_text`: user turns and answers), where a benchmark item or an eval record's content
would appear, never a system prompt or a tool result, which repeat across rows by design.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

_NOT_WORD = re.compile(r"[\W_]+")
PROMPT_ROLES = ("system", "user", "tool")
DIALOGUE_ROLES = ("user", "assistant")


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
            parts += _message_parts(message)
    return "\n".join(parts)


def dialogue_text(record: dict[str, Any]) -> str:
    """The user turns and the answers (as `turn_text` gives them), joined by newlines: what
    decontamination compares."""
    return "\n".join(part for m in record["messages"] if m["role"] in DIALOGUE_ROLES for part in _message_parts(m))


def conversation_words(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(words(dialogue_text(record)), words(turn_text(record))), each turn split once."""
    dialogue: list[str] = []
    every: list[str] = []
    for message in record["messages"]:
        tokens = words("\n".join(_message_parts(message)))
        every += tokens
        if message["role"] in DIALOGUE_ROLES:
            dialogue += tokens
    return dialogue, every


def _message_parts(message: dict[str, Any]) -> list[str]:
    parts = [str(message.get("content") or "")]
    if message.get("reasoning_content"):
        parts.append(str(message["reasoning_content"]))
    return parts + [str(call) for call in message.get("tool_calls") or ()]


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
    """A benchmark item's text: `field` when given, else messages (user turns and answers), question,
    prompt, problem or text.

    Returns:
        The text, or None when the record has none of those fields.
    """
    if field is not None:
        value = record.get(field)
        return None if value is None else _flatten(value)
    if isinstance(record.get("messages"), list):  # the dialogue: a system prompt is no item's text
        return "\n".join(str(m.get("content") or "") for m in record["messages"]
                         if isinstance(m, dict) and m.get("role") in DIALOGUE_ROLES)
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
