"""Which tokens end an assistant turn: given, read from generation_config.json, or inferred.

In order of precedence:

  stop_tokens          the option (`data.stop_tokens`, `--stop-tokens`): exactly these
  generation_config    the tokenizer's eos and the ids of its folder's generation_config.json
                       `eos_token_id`, which is what generate() stops on
  inferred             no such file (what `tokenizer.save_pretrained()` writes): the eos, and the
                       end-of-turn tokens the template itself writes after an assistant turn's own
                       text, learnt from probe renders (a plain answer, an answer after reasoning, a
                       tool call): the first known end-of-turn token there, else the control token
                       right after the text; for templates that write no end marker, the marker
                       that opens the next message

A marker that the template writes inside a turn and follows with more of that same turn
(gpt-oss's `<|end|>` between the analysis and the final message) is found before the turn's own
text ends, so it is never inferred; `turn_targets` applies the same rule to every turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError

KNOWN_STOP_MARKERS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|end|>", "<|return|>", "<|call|>",
    "<end_of_turn>", "</s>", "<|END_OF_TURN_TOKEN|>", "<｜end▁of▁sentence｜>", "<|endoftext|>",
    "<|user|>", "<|observation|>", "<eos>",
)
"""End-of-turn tokens of known model families: the candidates a probe render may show ending a
turn (only those the tokenizer defines count; the eos always does)."""
PROBE_TEXT = "sftpack-probe-answer"
PROBE_CITY = "sftpack-probe-city"
PROBE_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
_USER = {"role": "user", "content": "Hi"}
_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"city": PROBE_CITY}}}]}
_RESULT = {"role": "tool", "tool_call_id": "call00001", "content": "Sunny"}
SOURCES = ("stop_tokens", "generation_config", "inferred")


@dataclass(frozen=True)
class StopMarkers:
    """The stop markers in use and where they come from (recorded in pack's manifest)."""

    tokens: tuple[str, ...]
    """Longest first, so a marker that contains another is matched whole."""
    source: str
    """One of SOURCES."""

    def as_manifest(self) -> dict[str, Any]:
        return {"tokens": sorted(self.tokens), "source": self.source}


def _longest_first(markers: set[str]) -> tuple[str, ...]:
    return tuple(sorted(markers, key=lambda m: (-len(m), m)))


def given_markers(tokenizer: Any, stop_tokens: tuple[str, ...] | list[str]) -> StopMarkers:
    """The `stop_tokens` option, checked: each must be one token of the vocabulary.

    Raises:
        SftpackError: a marker the tokenizer does not have as one token.
    """
    vocab = tokenizer.get_vocab()
    unknown = [m for m in stop_tokens if m not in vocab]
    if unknown or not stop_tokens:
        raise SftpackError(f"stop_tokens {list(stop_tokens)!r}: {unknown or 'none given'} are not tokens of the "
                           f"tokenizer; give the end-of-turn tokens the model emits (--stop-tokens '<|im_end|>')")
    return StopMarkers(_longest_first(set(stop_tokens)), "stop_tokens")


def generation_config_markers(tokenizer: Any, added: frozenset[str]) -> StopMarkers | None:
    """eos plus the ids of the folder's generation_config.json `eos_token_id`; None without that file."""
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    try:
        ids = json.loads((folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return None
    markers = _eos(tokenizer)
    for token_id in ids if isinstance(ids, list) else [ids] if isinstance(ids, int) else []:
        token = tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(token, str) and token in added:
            markers.add(token)
    return StopMarkers(_longest_first(markers), "generation_config")


def _eos(tokenizer: Any) -> set[str]:
    eos = getattr(tokenizer, "eos_token", None)
    return {eos} if isinstance(eos, str) and eos else set()


def _first_marker(text: str, start: int, candidates: set[str]) -> str | None:
    """The candidate found first in text[start:] (the longest where two start together)."""
    found = [(text.find(m, start), -len(m), m) for m in candidates if text.find(m, start) >= 0]
    return min(found)[2] if found else None


def _render_ending(renderer: Any, messages: list[dict], tools: list | None) -> str | None:
    """A probe conversation rendered as a training example (no generation prompt), with tool-call
    arguments as objects, then as strings; None when the template refuses it."""
    for as_string in (False, True):
        text = renderer.render_or_none(messages, tools, arguments_as_string=as_string)
        if text is not None:
            return text
    return None


def infer_markers(renderer: Any, tokenizer: Any, added: frozenset[str]) -> StopMarkers:
    """Stop markers from the template's own rendering (module docstring). `renderer` is the
    ChatRenderer being built (typed Any: chat_template imports this module)."""
    candidates = {m for m in KNOWN_STOP_MARKERS if m in added} | _eos(tokenizer)
    markers = _eos(tokenizer)
    answer = {"role": "assistant", "content": PROBE_TEXT}
    probes = [  # (conversation ending at the turn, its last own text, what may follow the turn)
        ([_USER, answer], PROBE_TEXT, _USER),
        ([_USER, dict(answer, reasoning_content="Thinking it over.")], PROBE_TEXT, _USER),
        ([_USER, _CALL], PROBE_CITY, _RESULT),
    ]
    for messages, own, follower in probes:
        tools = PROBE_TOOLS if follower is _RESULT else None
        text = _render_ending(renderer, messages, tools)
        if text is None or own not in text:
            continue
        at = text.rindex(own) + len(own)
        marker = _first_marker(text, at, candidates | markers)
        if marker is None and own == PROBE_TEXT:  # a marker of the template's own (Gemma 4's <turn|>): the
            # control token right after the answer (not after a tool argument, which <|"|> may quote)
            written = renderer.added_re.match(text, len(text) - len(text[at:].lstrip()))
            marker = written.group() if written else None
        if marker is None:  # no end marker of its own (GLM): the one opening the next message stops it
            continued = _render_ending(renderer, messages + [follower], tools)
            if continued is not None and own in continued:
                marker = _first_marker(continued, continued.index(own) + len(own), candidates | markers)
        if marker is not None:
            markers.add(marker)
    return StopMarkers(_longest_first(markers), "inferred")


def inferred_warning(stop: dict[str, Any], tokenizer: str) -> str | None:
    """The warning a pack prints when its stop markers were inferred (manifest `tokenizer.stop_markers`)."""
    if stop.get("source") != "inferred":
        return None
    return (f"{tokenizer} has no generation_config.json, so the stop markers were inferred from the chat template's "
            f"rendering: {', '.join(stop['tokens'])}; if the model stops on others, give them with "
            f"--stop-tokens TOKEN ... or data.stop_tokens")
