"""Conversations -> trained token sequences: the masking stage's entry.

    conversation --prepare (reasoning, tool-call arguments)--> messages as the template reads them
                 --one render; the shape's skeleton (pipeline/templates/one_render.py) when it fits,
                   else every turn's prompt rendered (pipeline/templates/turn_targets.py)--> [(text, trained spans)]
    many texts   --one Rust encode_batch with offsets--> input_ids, labels (-100 where not trained)

A token is trained iff its character range overlaps a trained span (transformers' rule), so
input_ids are exactly tokenizer(text, add_special_tokens=False).input_ids and nothing drifts at
turn boundaries. Labels are not shifted (TRL convention).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sftpack.errors import SftpackError
from sftpack.templates.one_render import from_skeleton
from sftpack.templates.turn_targets import AUDIT_KEYS, MaskOptions, Span, TemplateNotMaskable, located_sequences

__all__ = ["AUDIT_KEYS", "IGNORE_INDEX", "MaskOptions", "TemplateNotMaskable", "conversation_sequences", "encode_batch",
           "token_mask", "EncodedExample", "EncodedSequence"]

if TYPE_CHECKING:
    from sftpack.templates.chat_template import ChatRenderer

IGNORE_INDEX = -100
"""The label of a token that is not trained (PyTorch's cross-entropy ignore_index, TRL's convention)."""


@dataclass(frozen=True)
class EncodedSequence:
    """One trained sequence: tokens, labels, and the text they come from."""

    input_ids: np.ndarray
    """int32 (n,): tokenizer(text, add_special_tokens=False).input_ids."""
    labels: np.ndarray
    """int32 (n,): the token id where trained, -100 elsewhere (not shifted)."""
    text: str
    trained_spans: tuple[Span, ...]
    """Character spans [start, end) of `text` that are trained."""


@dataclass(frozen=True)
class EncodedExample:
    """One conversation as trained sequences (usually one), or why it could not be."""

    sequences: tuple[EncodedSequence, ...] = ()
    audit: dict[str, int] = field(default_factory=dict)
    """Counts under AUDIT_KEYS for this conversation (zeros left out)."""
    error: str | None = None
    """What went wrong, naming the conversation; None when encoded."""
    reason: str | None = None
    """Short drop reason: template_error, template_not_maskable, too_long or invalid_record (a lone surrogate)."""
    chars: int = 0
    """The longest sequence's characters, for a too_long drop decided before tokenizing (else 0)."""


def conversation_sequences(renderer: ChatRenderer, messages: list[dict], tools: list[dict] | None = None,
                           options: MaskOptions = MaskOptions(), name: str = "conversation",
                           kwargs: dict | None = None) -> tuple[list[tuple[str, tuple[Span, ...]]], dict[str, int]]:
    """Render a conversation into trained sequences (module docstring).

    Args:
        renderer: the template.
        messages: [{"role", "content", "tool_calls"?, "reasoning_content"?...}].
        tools: tool schemas passed to the template as `tools`, or None.
        options: train_on, turns and reasoning.
        name: how error messages name the conversation (e.g. "conversation 'alpaca-3'").
        kwargs: the conversation's template arguments (its `chat_template_kwargs`), over the
            renderer's; given to every render of it.

    Returns:
        ([(text, sorted disjoint trained spans)], audit counts for this conversation).

    Raises:
        TemplateNotMaskable: turns="auto" and a turn's generation prompt is not a prefix of the
            conversation ending at it (nor an opened think block); names the turn and the text.
        jinja2.TemplateError, TypeError, ...: the template raised on this conversation.
    """
    from sftpack.templates.chat_template import with_string_arguments

    return with_string_arguments(renderer, messages, lambda: _sequences(renderer, messages, tools, options, name, kwargs))


def _sequences(renderer: ChatRenderer, messages: list[dict], tools: list[dict] | None, options: MaskOptions,
               name: str, kwargs: dict | None) -> tuple[list[tuple[str, tuple[Span, ...]]], dict[str, int]]:
    from sftpack.templates.fields import TRAIN_FLAG

    msgs, variables, thoughts = renderer.prepare(messages, tools, options.reasoning, kwargs)
    untrained = frozenset(i for i, m in enumerate(messages)
                          if m.get("role") == "assistant" and m.get(TRAIN_FLAG) is False)
    full = renderer.render_prepared(msgs, variables, False)
    known = None if untrained else from_skeleton(renderer, msgs, variables, full, options)
    if known is not None:
        return known
    sequences, audit = located_sequences(renderer, msgs, variables, thoughts, full, options, name, untrained)
    return sequences, audit | ({"turns_marked_untrained": len(untrained)} if untrained else {})


# ---------------------------------------------------------------- many conversations, as tokens

def token_mask(offsets: np.ndarray, spans: tuple[Span, ...] | list[Span]) -> np.ndarray:
    """bool (n,): which tokens overlap any span. offsets: (n, 2) char [start, end) per token.

    Spans must be sorted and disjoint. A zero-width token counts as covering its start char.
    """
    if not spans or offsets.shape[0] == 0:
        return np.zeros(offsets.shape[0], dtype=bool)
    span_starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
    span_ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
    tok_starts = offsets[:, 0]
    tok_ends = np.maximum(offsets[:, 1], tok_starts + 1)
    # First span ending after the token starts; the token overlaps it iff that span starts before
    # the token ends (later spans start later still, so they cannot overlap if this one does not).
    k = np.searchsorted(span_ends, tok_starts, side="right")
    inside = k < len(spans)
    hit = np.zeros(offsets.shape[0], dtype=bool)
    hit[inside] = span_starts[k[inside]] < tok_ends[inside]
    return hit


def _conversation_name(conversation: dict, index: int) -> str:
    if conversation.get("id") is not None:
        return f"conversation {str(conversation['id'])!r}"
    return f"conversation #{index} of the batch"


def encode_batch(renderer: ChatRenderer, tokenizer: Any, conversations: list[dict],
                 options: MaskOptions = MaskOptions(), max_chars: int | None = None) -> list[EncodedExample]:
    """Render, tokenize (one batched call) and mask many conversations.

    Args:
        renderer: the chat template.
        tokenizer: a fast tokenizer (offsets are needed).
        conversations: dicts with "messages", optional "tools", optional "chat_template_kwargs"
            (template arguments over the renderer's) and optional "id" (used in errors).
        options: train_on, turns, reasoning.
        max_chars: sequences longer than this are not tokenized (reason "too_long"): a caller that
            drops long examples passes max_length x the longest token's characters, so a 50 MB line
            costs a render, not a tokenization.

    Returns:
        One EncodedExample per conversation, in order. A conversation the template raises on
        (reason "template_error") or cannot mask ("template_not_maskable") gets `error` set;
        the rest of the batch is unaffected. `audit["split_extra_tokens"]` counts the tokens of a
        split conversation's sequences beyond its longest one.

    Raises:
        SftpackError: options hold a value that is not one of the accepted ones.
    """
    from sftpack.templates.chat_template import RENDER_ERRORS

    if options.problems():
        raise SftpackError("; ".join(options.problems()))
    results: list[EncodedExample | None] = [None] * len(conversations)
    rendered: list[tuple[int, list[tuple[str, tuple[Span, ...]]], dict[str, int]]] = []
    for index, conversation in enumerate(conversations):
        name = _conversation_name(conversation, index)
        try:
            sequences, audit = conversation_sequences(renderer, conversation["messages"], conversation.get("tools"),
                                                      options, name, conversation.get("chat_template_kwargs"))
        except TemplateNotMaskable as err:
            results[index] = EncodedExample(error=str(err) + argument_hint(renderer, conversation, options),
                                            reason="template_not_maskable")
        except RENDER_ERRORS as err:
            results[index] = EncodedExample(error=f"{name}: the chat template failed: {type(err).__name__}: {err}"
                                                  f"{argument_hint(renderer, conversation, options)}", reason="template_error")
        else:
            longest = max(len(text) for text, _ in sequences)
            if max_chars is not None and longest > max_chars:
                results[index] = EncodedExample(error=f"{name}: {longest:,} characters cannot fit the token limit",
                                                reason="too_long", chars=longest)
            elif not all(_encodable(text) for text, _ in sequences):  # the tokenizer would fail the batch
                results[index] = EncodedExample(error=f"{name}: the text holds a lone UTF-16 surrogate, which no "
                                                      f"tokenizer accepts; validate rejects such lines "
                                                      f"(lone_surrogate)", reason="invalid_record")
            else:
                rendered.append((index, sequences, audit))
    texts = [text for _, sequences, _ in rendered for text, _ in sequences]
    encodings = iter(_encode_texts(tokenizer, texts) if texts else [])
    for index, sequences, audit in rendered:
        encoded = tuple(_labelled(next(encodings), text, spans) for text, spans in sequences)
        if len(encoded) > 1:
            sizes = [s.input_ids.size for s in encoded]
            audit = audit | {"split_extra_tokens": sum(sizes) - max(sizes)}
        results[index] = EncodedExample(encoded, audit)
    return results


HINTED_ARGUMENTS = (("enable_thinking", False), ("thinking", False))
"""Template arguments whose value turns a think-opening generation prompt off, probed when a
conversation fails (besides a tools-like variable the template reads, probed as [])."""


def argument_hint(renderer: ChatRenderer, conversation: dict, options: MaskOptions = MaskOptions()) -> str:
    """When a conversation the template refuses (an undefined variable, plain turns under a
    think-opening generation prompt) renders and masks exactly with one more template argument that
    the template reads (a tools-like variable as [], enable_thinking=false, thinking=false): a
    sentence naming it as --template-arg and data.chat_template_kwargs; "" otherwise. Never applied:
    the user chooses.
    """
    from sftpack.templates.chat_template import RENDER_ERRORS
    from sftpack.templates.fields import RESERVED_TEMPLATE_ARGS

    own = dict(conversation.get("chat_template_kwargs") or {})
    given = renderer.template_kwargs.keys() | own.keys() | RESERVED_TEMPLATE_ARGS
    read = renderer.variables_read - given
    probes = [(name, []) for name in sorted(read) if "tool" in name.lower() or "function" in name.lower()]
    probes += [(name, value) for name, value in HINTED_ARGUMENTS if name in read]
    for name, value in probes:
        try:
            _, audit = conversation_sequences(renderer, conversation["messages"], conversation.get("tools"), options,
                                              kwargs=own | {name: value})
        except (TemplateNotMaskable, *RENDER_ERRORS):
            continue
        if not audit.get("assistant_text_not_trained"):
            shown = json.dumps(value)
            return (f"; with the template argument {name}={shown} it renders and masks exactly: pass --template-arg "
                    f"{name}={shown} (data.chat_template_kwargs: {{{name}: {shown}}}) if that is how the model is prompted")
    return ""


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (no lone surrogate): UTF-8 encoding in C, about 1 GB/s."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encode_texts(tokenizer: Any, texts: list[str]) -> list:
    # The Rust tokenizer directly: what tokenizer(texts, add_special_tokens=False) calls, without
    # transformers converting every Encoding to Python lists and dicts first (~40% of encode).
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        backend.no_truncation()
        backend.no_padding()
    return backend.encode_batch(texts, add_special_tokens=False)


def _labelled(encoding: Any, text: str, spans: tuple[Span, ...]) -> EncodedSequence:
    ids = np.array(encoding.ids, dtype=np.int32)
    trained = _trained_by_boundaries(encoding, ids.size, spans)
    if trained is None:  # a span edge no token holds: every token's offsets, the general rule
        offsets = np.fromiter(itertools.chain.from_iterable(encoding.offsets), dtype=np.int64,
                              count=2 * ids.size).reshape(-1, 2)
        trained = token_mask(offsets, spans)
    labels = np.where(trained, ids, np.int32(IGNORE_INDEX)).astype(np.int32)
    return EncodedSequence(ids, labels, text, spans)


def _trained_by_boundaries(encoding: Any, size: int, spans: tuple[Span, ...]) -> np.ndarray | None:
    """token_mask's answer from a few Rust look-ups per span instead of every token's offsets: the
    tokens from the one holding the span's first character to the one holding its last, widened
    while a neighbour still overlaps (a character split over several byte tokens). None when a
    span edge lies in no token (then the caller applies token_mask)."""
    trained = np.zeros(size, dtype=bool)
    for start, end in spans:
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:
            return None
        while first > 0 and _token_end(encoding, first - 1) > start:
            first -= 1
        while last + 1 < size and encoding.token_to_chars(last + 1)[0] < end:
            last += 1
        trained[first:last + 1] = True
    return trained


def _token_end(encoding: Any, index: int) -> int:
    """Where token `index` ends; a zero-width token covers its start character (token_mask's rule)."""
    start, end = encoding.token_to_chars(index)
    return max(end, start + 1)
