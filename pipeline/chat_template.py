"""Render conversations with a chat template and mark the tokens the model learns.

A conversation is rendered once to text S and tokenized once, so `input_ids` are exactly
`tokenizer(S, add_special_tokens=False).input_ids` (no drift at turn boundaries). Training
targets are found as character spans of S, then mapped to tokens through the offsets:

    S = <bos>...user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>...
        |---------- P = render(messages[:i], add_generation_prompt=True) -------------------||--trained---|

Two ways to find an assistant turn's span, chosen per template:

  tags   the template wraps assistant output in `{% generation %}...{% endgeneration %}`: the
         spans are exactly those blocks (what transformers' `return_assistant_tokens_mask` uses).
  prefix any other template. For assistant message i:
           P = render(messages[:i], add_generation_prompt=True)  must be a prefix of S;
           A = render(messages[:i + 1])                          the conversation ending at i;
           E = what the template writes only when a conversation ends (ChatML: "", Phi-3: eos),
               measured once on a plain conversation against it continued by a probe user turn
               (on this conversation instead, if the template refuses the plain one);
           the turn ends where A and S part (common prefix, never cutting an added token), or at
           len(S) - len(E) for the final message; minus trailing whitespace, so the span holds the
           turn's content, rendered tool calls and its end-of-turn marker (<|im_end|>, </s>...)
           but neither the "\\n" after the marker nor text the template writes only at the end
           of a conversation (Phi-3's final eos). What A has beyond the common prefix must be E,
           and S must end with E; otherwise the template renders turn i differently depending
           on what follows (e.g. drops earlier turns' reasoning) and we raise.

A template where P is not a prefix of S (it rewrites earlier text depending on later turns, or
its generation prompt differs from how it renders an assistant turn) and has no generation tags
cannot be masked: `TemplateNotMaskable` names the conversation, the turn and the first differing
characters. Nothing is guessed.

A token is trained iff its character range overlaps a trained span (the rule transformers'
assistant mask uses: from the token holding the span's first character to the one holding its
last). Labels are the token's own id there and -100 elsewhere, not shifted (TRL convention).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import Any

import jinja2
import numpy as np
from transformers.utils.chat_template_utils import (
    _alias_reasoning_fields,
    _compile_jinja_template,
    _plain_template_data,
    _render_with_assistant_indices,
)

from pipeline.errors import SftpackError
from pipeline.shards import IGNORE_INDEX

TRAIN_ON = ("all", "last")
SPAN_METHODS = ("auto", "tags", "prefix")
SNIPPET_CHARS = 60
"""How much of two differing renderings an error message quotes."""
PROBE_MESSAGE = {"role": "user", "content": "Continue."}
"""Appended after a final assistant turn to see where that turn's own text ends."""
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)
"""What a template raises on data it does not accept (raise_exception, undefined keys, str + None)."""

Span = tuple[int, int]


class TemplateNotMaskable(SftpackError):
    """The template does not let us locate an assistant turn's tokens exactly."""


@dataclass(frozen=True)
class EncodedExample:
    """One conversation, tokenized and masked; or why it could not be.

    On error, `input_ids`, `labels` are empty, `text` is "" and `error`/`reason` are set.
    """

    input_ids: np.ndarray
    """int32 (n,): tokenizer(text, add_special_tokens=False).input_ids."""
    labels: np.ndarray
    """int32 (n,): the token id where trained, -100 elsewhere (not shifted)."""
    text: str = ""
    """The rendered conversation."""
    trained_spans: tuple[Span, ...] = ()
    """Character spans [start, end) of `text` that are trained, one per trained turn (or block)."""
    error: str | None = None
    """What went wrong, naming the conversation; None when encoded."""
    reason: str | None = None
    """Short drop reason: template_error (the template raised) or template_not_maskable."""


class ChatRenderer:
    """A compiled chat template plus the variables `apply_chat_template` gives it.

    Rendering equals `tokenizer.apply_chat_template(messages, tools=tools, chat_template=template,
    add_generation_prompt=..., tokenize=False)`: messages lose None-valued keys, are converted to
    plain JSON data with reasoning fields aliased, and the template sees the tokenizer's named
    special tokens (bos_token, eos_token, ...), raise_exception, strftime_now and tojson.
    """

    def __init__(self, tokenizer: Any, chat_template: str | None = None):
        """Args:
            tokenizer: a Hugging Face tokenizer; its special tokens become template variables.
            chat_template: Jinja source overriding the tokenizer's template; None uses the
                tokenizer's (its "default" entry when it has several).

        Raises:
            SftpackError: no template, or the template does not compile.
        """
        if chat_template is None:
            try:
                chat_template = tokenizer.get_chat_template()
            except ValueError as err:
                raise SftpackError(f"chat template: {err}") from None
        self.template: str = chat_template
        try:
            self._compiled = _compile_jinja_template(chat_template)
        except jinja2.TemplateSyntaxError as err:
            raise SftpackError(
                f"chat template line {err.lineno}: {err.message}; fix the Jinja syntax"
            ) from None
        self._variables = _plain_template_data(dict(tokenizer.special_tokens_map))
        self.has_generation_tags: bool = bool(_GENERATION_TAG.search(chat_template))
        added = sorted(map(str, tokenizer.added_tokens_encoder), key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, added)) or "(?!)")  # (?!): never matches
        self._added_max = max(map(len, added), default=1)
        self._end_text: str | None | bool = False  # False: not measured yet

    @property
    def end_text(self) -> str | None:
        """What the template writes only when a conversation ends (after a final assistant turn).

        ChatML: "", Phi-3: its eos. Measured once on a plain user/assistant conversation against
        the same continued by a probe user turn; None when the template refuses that conversation.
        """
        if self._end_text is False:
            plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
            try:
                text = self._render(plain, None, False)
                continued = self._render(plain + [PROBE_MESSAGE], None, False)
            except _RENDER_ERRORS:
                self._end_text = None
            else:
                self._end_text = text[self.split_point(text, continued):]
        return self._end_text

    def split_point(self, a: str, b: str) -> int:
        """Where a and b part: their common prefix length, moved back to the start of an added
        token (<|user|>, <|endoftext|>) it would cut, so "...<|end|>\n<|endoftext|>" and
        "...<|end|>\n<|user|>" part after the newline, not after "<|".
        """
        end = _common_prefix_len(a, b)
        for text in (a, b):
            window = max(0, end - self._added_max + 1)
            for match in self._added_re.finditer(text, window, end + self._added_max):
                if match.start() < end < match.end():
                    end = match.start()
                    break
        return end

    @property
    def template_sha256(self) -> str:
        """Hex sha256 of the template source (utf-8)."""
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               add_generation_prompt: bool = False) -> str:
        """Render one conversation to text, exactly as apply_chat_template(tokenize=False) does.

        Raises:
            jinja2.TemplateError (and TypeError, ...): whatever the template raises.
        """
        return self._render(*self.prepare(messages, tools), add_generation_prompt)

    def render_with_generation_spans(self, messages: list[dict],
                                     tools: list[dict] | None = None) -> tuple[str, list[Span]]:
        """Render, returning the character spans of every `{% generation %}` block."""
        return self._render_spans(*self.prepare(messages, tools))

    def prepare(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], Any]:
        """The messages and tools as the template sees them (done once per conversation)."""
        messages = [{k: v for k, v in message.items() if v is not None} for message in messages]
        return _alias_reasoning_fields(_plain_template_data(messages)), _plain_template_data(tools)

    def _render_spans(self, messages: list[dict], tools: Any) -> tuple[str, list[Span]]:
        """render_with_generation_spans for prepared messages."""
        text, spans = _render_with_assistant_indices(
            self._compiled, messages, tools, None, False, **self._variables
        )
        return text, [tuple(span) for span in spans]

    def _render(self, messages: list[dict], tools: Any, add_generation_prompt: bool) -> str:
        """Render prepared messages (see `prepare`)."""
        return self._compiled.render(
            messages=messages, tools=tools, documents=None,
            add_generation_prompt=add_generation_prompt, **self._variables,
        )


def _common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix; binary search over C-speed slice compares."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _differ(label_a: str, a: str, label_b: str, b: str, at: int) -> str:
    return (f"they differ at character {at}: {label_a} has {a[at:at + SNIPPET_CHARS]!r}, "
            f"{label_b} has {b[at:at + SNIPPET_CHARS]!r}")


_FIX = ("add {% generation %}...{% endgeneration %} around the assistant output in the template, "
        "or pass a prefix-preserving template with --chat-template")


def turn_spans(renderer: ChatRenderer, messages: list[dict], tools: list[dict] | None = None,
               train_on: str = "all", method: str = "auto",
               name: str = "conversation") -> tuple[str, list[Span]]:
    """Render a conversation and find the character spans to train.

    Args:
        renderer: the template.
        messages: [{"role", "content", "tool_calls"?...}].
        tools: tool schemas passed to the template as `tools`, or None.
        train_on: "all" assistant turns or only the "last".
        method: "tags" (generation blocks), "prefix" (see the module docstring), or "auto":
            tags when the template has them, else prefix.
        name: how error messages name the conversation (e.g. "conversation 'alpaca-3'").

    Returns:
        (rendered text S, sorted disjoint non-empty spans [start, end) of S).

    Raises:
        TemplateNotMaskable: the template is not prefix-preserving here (or, with "tags", has
            no generation tags); the message names the turn and what differs.
        jinja2.TemplateError, TypeError, ...: the template raised on this conversation.
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on {train_on!r}: expected one of {TRAIN_ON}")
    if method not in SPAN_METHODS:
        raise ValueError(f"method {method!r}: expected one of {SPAN_METHODS}")
    use_tags = renderer.has_generation_tags if method == "auto" else method == "tags"
    if use_tags and not renderer.has_generation_tags:
        raise TemplateNotMaskable("method 'tags' needs {% generation %} tags; the template has none")
    msgs, tools = renderer.prepare(messages, tools)
    assistant = [i for i, m in enumerate(msgs) if m.get("role") == "assistant"]
    if train_on == "last":
        assistant = assistant[-1:]

    if use_tags:
        text, blocks = renderer._render_spans(msgs, tools)
        spans = [(s, e) for s, e in blocks if e > s]
        if train_on == "last":
            start = _prompt_end(renderer, msgs, tools, text, assistant[0], name) if assistant else len(text)
            spans = [(s, e) for s, e in spans if s >= start]
        return text, spans

    text = renderer._render(msgs, tools, False)
    last = len(msgs) - 1
    # end_text: what the template writes only at the end of a conversation (ChatML: "", Phi-3:
    # eos). A final assistant turn stops before it; an earlier turn stops where the conversation
    # ending at it parts from the full one, and what it has beyond that must be end_text too.
    end_text = renderer.end_text
    if end_text is None and assistant and msgs[last].get("role") == "assistant":
        continued = renderer._render(msgs + [PROBE_MESSAGE], tools, False)  # this conversation's own
        end_text = text[renderer.split_point(text, continued):]
    spans = []
    for i in assistant:
        start = _prompt_end(renderer, msgs, tools, text, i, name)
        where = f"{name}, assistant turn messages[{i}]"
        if i == last:
            if end_text is None or not text.endswith(end_text):
                raise TemplateNotMaskable(
                    f"{where}: the conversation does not end with the template's end text "
                    f"{end_text!r} (it ends {text[-SNIPPET_CHARS:]!r}), so the template renders the final "
                    f"turn differently from a plain one; {_FIX}")
            end = len(text) - len(end_text)
        else:
            alone = renderer._render(msgs[: i + 1], tools, False)
            end = renderer.split_point(alone, text)
            tail = alone[end:]  # written only because the conversation ends at turn i
            if end < start or (end_text is not None and not end_text.endswith(tail)) or not text.endswith(tail):
                raise TemplateNotMaskable(
                    f"{where}: the turn renders differently once later messages follow; "
                    f"{_differ('the conversation ending at this turn', alone, 'the full conversation', text, end)}; "
                    f"{_FIX}")
        stop = start + len(text[start:end].rstrip())  # the "\n" after <|im_end|> is boilerplate
        if stop > start:
            spans.append((start, stop))
    return text, spans


def _prompt_end(renderer: ChatRenderer, msgs: list[dict], tools: Any, text: str, i: int, name: str) -> int:
    """len(P) for assistant message i, after checking P is a prefix of the full rendering."""
    prompt = renderer._render(msgs[:i], tools, True)
    if not text.startswith(prompt):
        at = _common_prefix_len(prompt, text)
        raise TemplateNotMaskable(
            f"{name}, assistant turn messages[{i}]: the template is not prefix-preserving: rendering "
            f"messages[:{i}] with add_generation_prompt=True is not a prefix of the full rendering; "
            f"{_differ('the prompt', prompt, 'the full conversation', text, at)}; {_FIX}")
    return len(prompt)


def token_mask(offsets: np.ndarray, spans: list[Span]) -> np.ndarray:
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


def _failed(message: str, reason: str) -> EncodedExample:
    empty = np.zeros(0, dtype=np.int32)
    return EncodedExample(input_ids=empty, labels=empty, error=message, reason=reason)


def encode_batch(renderer: ChatRenderer, tokenizer: Any, conversations: list[dict],
                 train_on: str = "all", method: str = "auto", max_chars: int | None = None) -> list[EncodedExample]:
    """Render, tokenize (one batched call) and mask many conversations.

    Args:
        renderer: the chat template.
        tokenizer: a fast tokenizer (offsets are needed).
        conversations: dicts with "messages", optional "tools" and optional "id" (used in errors).
        train_on: "all" assistant turns, or only the "last".
        method: span method, see `turn_spans`.
        max_chars: renderings longer than this are not tokenized (reason "too_long"): a caller
            that drops long examples passes max_length x the longest token's characters, so a
            50 MB line costs a render, not a tokenization.

    Returns:
        One EncodedExample per conversation, in order. A conversation the template raises on
        (reason "template_error") or cannot mask ("template_not_maskable") gets `error` set;
        the rest of the batch is unaffected.

    Raises:
        ValueError: train_on or method is not one of the accepted values.
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on {train_on!r}: expected one of {TRAIN_ON}")
    results: list[EncodedExample | None] = [None] * len(conversations)
    rendered: list[tuple[int, str, list[Span]]] = []
    for index, conversation in enumerate(conversations):
        name = _conversation_name(conversation, index)
        try:
            text, spans = turn_spans(renderer, conversation["messages"], conversation.get("tools"),
                                     train_on, method, name)
        except TemplateNotMaskable as err:
            results[index] = _failed(str(err), "template_not_maskable")
        except _RENDER_ERRORS as err:
            results[index] = _failed(f"{name}: the chat template failed: {type(err).__name__}: {err}",
                                     "template_error")
        else:
            if max_chars is not None and len(text) > max_chars:
                results[index] = _failed(f"{name}: {len(text):,} characters cannot fit the token limit", "too_long")
            else:
                rendered.append((index, text, spans))
    if rendered:
        # The Rust tokenizer directly: what tokenizer(texts, add_special_tokens=False) calls, without
        # transformers converting every Encoding to Python lists and dicts first (~40% of encode).
        backend = tokenizer.backend_tokenizer
        if backend.truncation is not None or backend.padding is not None:
            backend.no_truncation()
            backend.no_padding()
        encodings = backend.encode_batch([text for _, text, _ in rendered], add_special_tokens=False)
        for (index, text, spans), enc in zip(rendered, encodings):
            token_ids, token_offsets = enc.ids, enc.offsets
            ids = np.fromiter(token_ids, dtype=np.int32, count=len(token_ids))
            offsets = np.fromiter(itertools.chain.from_iterable(token_offsets), dtype=np.int64,
                                  count=2 * len(token_offsets)).reshape(-1, 2)
            labels = np.where(token_mask(offsets, spans), ids, np.int32(IGNORE_INDEX)).astype(np.int32)
            results[index] = EncodedExample(ids, labels, text, tuple(spans))
    return results
