"""Which tokens of a conversation the model learns: inference-faithful targets, split when needed.

Every trained assistant turn i is trained on what the model itself writes at inference:

    P_i = render(messages[:i], add_generation_prompt=True)       the prompt it is given
    A_i = render(messages[:i + 1])                                the conversation ending at turn i
    F_i = P_i + what A_i renders for turn i, up to and including its stop marker

    ChatML: P_i = <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n
            F_i = P_i + "Hello!<|im_end|>"         (the "\\n" after the marker is never trained)

The stop marker is the first of the markers that end A_i (`ChatRenderer.stop_end`: Phi-3's
"<|end|>\\n<|endoftext|>" stops at <|end|>, gpt-oss's final answer at <|return|>). A template that
writes no marker after a turn (GLM) is trained on the marker that opens the next turn. When the
generation prompt opens a think block that A_i does not render (DeepSeek-R1 and Nemotron Nano v2
end it with "<think>\\n"), the model continues that block:
F_i = P_i + reasoning + "\\n</think>\\n\\n" + the answer as A_i renders it.

Sequences, turns="auto": the full rendering S is one sequence and trains every turn i with S
starting with F_i, at [len(P_i), len(F_i)). A turn that S renders differently (later turns strip its
reasoning, the system prompt moved to the last user turn, <|return|> becomes <|end|>) is trained
in F_j, the sequence that ends with it, together with every earlier turn still untrained whose F_i
starts F_j. Each sequence ends at a turn no longer one contains, so this is the fewest sequences.

    Qwen3, two turns, both with reasoning:
        S   = <sys> <user1> <asst1: a1>  <user2> <asst2: <think>r2</think> a2>  trains turn 2
        F_1 = <sys> <user1> <asst1: <think>r1</think> a1>                       trains turn 1

turns="whole" trains S as it is: turn i starts where P_i and S part and ends at its first stop
marker (the final turn at the marker that ends S); turns S renders unlike F_i are counted.

Reasoning (`reasoning`): "train" trains it with the answer, "mask" renders it untrained, "drop"
removes it before rendering. A turn whose reasoning the template does not render, and a turn whose
tool calls it does not render, is counted; the latter is left untrained, never trained as an empty
turn. A token is trained iff its character range overlaps a trained span (transformers' rule).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.errors import SftpackError
from pipeline.shards import IGNORE_INDEX

TrainOn = Literal["all", "last"]
Turns = Literal["auto", "whole"]
Reasoning = Literal["train", "mask", "drop"]
TRAIN_ON: tuple[str, ...] = TrainOn.__args__
TURNS: tuple[str, ...] = Turns.__args__
REASONING: tuple[str, ...] = Reasoning.__args__
AUDIT_KEYS = ("split_conversations", "split_extra_tokens", "reasoning_not_rendered", "tool_calls_not_rendered",
              "turns_rendered_differently", "turns_without_stop", "spans_with_role_header")
"""Per-conversation counts `encode_batch` returns, summed into pack's manifest and the report."""
SNIPPET_CHARS = 60
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

Span = tuple[int, int]

if TYPE_CHECKING:  # pack imports this module for its options; a reused pack never loads the template engine
    from pipeline.chat_template import ChatRenderer


class TemplateNotMaskable(SftpackError):
    """The template does not let us locate an assistant turn's tokens exactly."""


@dataclass(frozen=True)
class MaskOptions:
    """How a conversation becomes trained sequences."""

    train_on: TrainOn = "all"
    """all: every assistant turn is trained; last: only the final one."""
    turns: Turns = "auto"
    """auto: split a conversation where its template renders a turn unlike at inference; whole: train
    the full rendering as it is (and count the turns it renders differently)."""
    reasoning: Reasoning = "train"
    """train: reasoning is trained with the answer; mask: rendered, not trained; drop: removed."""

    def problems(self) -> list[str]:
        """What is wrong with the values, one message each."""
        return [f"{name} {getattr(self, name)!r}: expected one of {', '.join(choices)}"
                for name, choices in (("train_on", TRAIN_ON), ("turns", TURNS), ("reasoning", REASONING))
                if getattr(self, name) not in choices]


@dataclass(frozen=True)
class _Target:
    index: int
    """Message index of the assistant turn."""
    prompt_end: int
    """len(P_i)."""
    text: str
    """F_i: the prompt and the turn up to its stop marker."""
    reasoning: Span | None
    """Where the turn's reasoning is in `text`, when rendered."""
    trained: bool
    """False when the template does not render the turn's tool calls."""


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
    """Short drop reason: template_error, template_not_maskable or too_long."""


# ---------------------------------------------------------------- one conversation, as text

def _differ(label_a: str, a: str, label_b: str, b: str, at: int) -> str:
    return (f"they differ at character {at}: {label_a} has {a[at:at + SNIPPET_CHARS]!r}, "
            f"{label_b} has {b[at:at + SNIPPET_CHARS]!r}")


def _continue_think_block(opened: str, body: str, thought: str | None, where: str, prompt: str) -> str:
    """The turn as the model writes it after a generation prompt that ends `opened` ("<think>\\n")."""
    block = f"{THINK_OPEN}\n{(thought or '').strip(chr(10))}\n{THINK_CLOSE}\n\n"
    if not block.startswith(opened):
        raise TemplateNotMaskable(
            f"{where}: the generation prompt ends {opened!r}, which the rendered turn does not start with "
            f"({body[:SNIPPET_CHARS]!r}); rendering messages[:i] with add_generation_prompt=True is not a "
            f"prefix of the conversation ending at the turn; use --turns whole or a template that renders "
            f"assistant turns as its generation prompt opens them")
    if body.lstrip().startswith(THINK_OPEN) and THINK_CLOSE in body:  # a block of its own: replaced
        body = body[body.index(THINK_CLOSE) + len(THINK_CLOSE):]
    return block[len(opened):] + body.lstrip()


def _turn_start(renderer: ChatRenderer, prompt: str, alone: str, thought: str | None, where: str) -> str:
    """The text the model writes after `prompt` for the turn that `alone` (the conversation ending
    at it) renders last, still with whatever follows its stop marker."""
    at = renderer.split_point(prompt, alone)
    body = alone[at:]
    opened = prompt[at:]
    if opened.startswith(THINK_OPEN) or (not opened and prompt.rstrip().endswith(THINK_OPEN) and THINK_CLOSE not in body):
        # The generation prompt opens a think block the rendered turn lacks or never closes (R1, Nemotron).
        opened = opened or prompt[prompt.rindex(THINK_OPEN):]
        return _continue_think_block(opened, body, thought, where, prompt)
    if not opened:
        return body
    # The prompt renders differently at inference (Mistral Nemo moves the system prompt into the last
    # user turn, Hermes closes grouped tool results otherwise): the turn is what `alone` renders after
    # the prompt's last control token and its text ("[/INST]", "<|im_start|>assistant\n"), trained
    # after the inference prompt.
    last = list(renderer.added_re.finditer(prompt))
    header = prompt[last[-1].start():] if last else ""
    found = alone.rfind(header) if header else -1
    if found < 0:
        raise TemplateNotMaskable(
            f"{where}: the template is not prefix-preserving: rendering messages[:i] with "
            f"add_generation_prompt=True is not a prefix of the conversation ending at the turn, and the "
            f"prompt's last header {header!r} is not in it; "
            f"{_differ('the prompt', prompt, 'the conversation', alone, at)}; use --turns whole or pass a "
            f"template whose generation prompt matches its assistant turns with --chat-template")
    return alone[found + len(header):]


def _turn_target(renderer: ChatRenderer, msgs: list[dict], tools: Any, full: str, i: int,
                 thought: str | None, where: str) -> tuple[_Target, dict[str, int]]:
    """F_i for assistant message i (module docstring), and what it could not render."""
    prompt = renderer.render_prepared(msgs[:i], tools, True)
    alone = full if i == len(msgs) - 1 else renderer.render_prepared(msgs[: i + 1], tools, False)
    body = _turn_start(renderer, prompt, alone, thought, where)
    audit: dict[str, int] = {}
    end = renderer.first_stop_end(body)
    if end is None:  # no end marker of its own (GLM): the marker that opens what follows stops it
        body = body.rstrip()
        follows = full[len(prompt) + len(body):].lstrip() if full.startswith(prompt + body) else ""
        stop = next((m for m in renderer.stop_markers if follows.startswith(m)), renderer.implied_stop)
        body += stop or ""
        end = len(body)
        if stop is None:
            audit["turns_without_stop"] = 1
    text = prompt + body[:end]
    turn = text[len(prompt):]
    reasoning = None
    if thought and thought.strip():
        found = turn.find(thought.strip())
        if found < 0:
            audit["reasoning_not_rendered"] = 1
        else:
            reasoning = (len(prompt) + found, len(prompt) + found + len(thought.strip()))
    names = [str((call.get("function") or {}).get("name", "")) for call in msgs[i].get("tool_calls") or []]
    trained = all(name and name in turn for name in names)
    if not trained:
        audit["tool_calls_not_rendered"] = 1
    return _Target(i, len(prompt), text, reasoning, trained), audit


def _whole_span(renderer: ChatRenderer, full: str, target: _Target) -> tuple[Span, Span | None, bool]:
    """Turn `target` as the full rendering S has it: (span, reasoning span, rendered as F_i)."""
    if full.startswith(target.text):
        return (target.prompt_end, len(target.text)), target.reasoning, True
    start = renderer.split_point(target.text[: target.prompt_end], full)
    rest = full[start:]
    end = renderer.first_stop_end(rest)
    end = len(rest.rstrip()) if end is None else end
    reasoning = None
    if target.reasoning is not None:
        thought = target.text[target.reasoning[0]:target.reasoning[1]]
        found = rest.find(thought, 0, end)
        reasoning = None if found < 0 else (start + found, start + found + len(thought))
    return (start, start + end), reasoning, False


def _holds(text: str, start: int, end: int, header: str) -> bool:
    """Whether text[start:end] holds `header` other than as its final stop marker (GLM's <|user|>)."""
    found = text.find(header, start, end)
    return 0 <= found and found + len(header) < end


def _cover(full: str, targets: list[_Target]) -> list[tuple[str, list[_Target]]]:
    """The fewest sequences keeping every target faithful: (text, targets trained in it)."""
    groups: list[tuple[str, list[_Target]]] = []
    covered: set[int] = set()
    if targets and full.startswith(targets[-1].text):
        members = [t for t in targets if full.startswith(t.text)]
        groups.append((full, members))
        covered.update(t.index for t in members)
    for target in reversed(targets):
        if target.index in covered:
            continue
        members = [t for t in targets if t.index not in covered and t.index <= target.index
                   and target.text.startswith(t.text)]
        covered.update(t.index for t in members)
        groups.append((target.text, members))
    return sorted(groups, key=lambda group: group[1][-1].index)


def _spans(trained: list[tuple[Span, Span | None, bool]], options: MaskOptions) -> tuple[Span, ...]:
    """Sorted trained spans; in mask mode each turn's reasoning is cut out of its span."""
    spans: list[Span] = []
    for (start, end), reasoning, keep in trained:
        if not keep:
            continue
        if options.reasoning == "mask" and reasoning is not None:
            spans.extend(s for s in ((start, reasoning[0]), (reasoning[1], end)) if s[1] > s[0])
        elif end > start:
            spans.append((start, end))
    return tuple(sorted(spans))


def conversation_sequences(renderer: ChatRenderer, messages: list[dict], tools: list[dict] | None = None,
                           options: MaskOptions = MaskOptions(), name: str = "conversation",
                           ) -> tuple[list[tuple[str, tuple[Span, ...]]], dict[str, int]]:
    """Render a conversation into trained sequences (module docstring).

    Args:
        renderer: the template.
        messages: [{"role", "content", "tool_calls"?, "reasoning_content"?...}].
        tools: tool schemas passed to the template as `tools`, or None.
        options: train_on, turns and reasoning.
        name: how error messages name the conversation (e.g. "conversation 'alpaca-3'").

    Returns:
        ([(text, sorted disjoint trained spans)], audit counts for this conversation).

    Raises:
        TemplateNotMaskable: turns="auto" and a turn's generation prompt is not a prefix of the
            conversation ending at it (nor an opened think block); names the turn and the text.
        jinja2.TemplateError, TypeError, ...: the template raised on this conversation.
    """
    from pipeline.chat_template import RENDER_ERRORS

    try:
        return _sequences(renderer, messages, tools, options, name)
    except RENDER_ERRORS:
        # Templates that concatenate `arguments` (DeepSeek V3.1) raise on objects: try strings once.
        if renderer.arguments_as_string or not any(m.get("tool_calls") for m in messages):
            raise
        renderer.arguments_as_string = True
        try:
            return _sequences(renderer, messages, tools, options, name)
        except RENDER_ERRORS:
            renderer.arguments_as_string = False
            raise


def _sequences(renderer: ChatRenderer, messages: list[dict], tools: list[dict] | None, options: MaskOptions,
               name: str) -> tuple[list[tuple[str, tuple[Span, ...]]], dict[str, int]]:
    msgs, tools, thoughts = renderer.prepare(messages, tools, options.reasoning)
    full = renderer.render_prepared(msgs, tools, False)
    known = _from_skeleton(renderer, msgs, tools, full, options)
    return known if known is not None else _located(renderer, msgs, tools, thoughts, full, options, name)


def _located(renderer: ChatRenderer, msgs: list[dict], tools: Any, thoughts: list[str | None], full: str,
             options: MaskOptions, name: str) -> tuple[list[tuple[str, tuple[Span, ...]]], dict[str, int]]:
    """The module docstring's method: renders of every turn's prompt and of the conversation ending
    at it, for prepared messages whose full rendering is `full`."""
    assistant = [i for i, m in enumerate(msgs) if m.get("role") == "assistant"]
    if options.train_on == "last":
        assistant = assistant[-1:]
    audit: dict[str, int] = {}
    targets = []
    for i in assistant:
        target, counts = _turn_target(renderer, msgs, tools, full, i, thoughts[i],
                                      f"{name}, assistant turn messages[{i}]")
        targets.append(target)
        for key, value in counts.items():
            audit[key] = audit.get(key, 0) + value
    if options.turns == "whole":
        trained = [_whole_span(renderer, full, t) for t in targets]
        differently = sum(not faithful for _, _, faithful in trained)
        if differently:
            audit["turns_rendered_differently"] = differently
        sequences = [(full, _spans([(s, r, t.trained) for (s, r, _), t in zip(trained, targets)], options))]
    else:
        sequences = [(text, _spans([((t.prompt_end, len(t.text)), t.reasoning, t.trained) for t in members],
                                   options))
                     for text, members in _cover(full, targets)]
        if len(sequences) > 1:
            audit["split_conversations"] = 1
        if not sequences:  # no assistant turn: the rendering, with nothing trained (pack drops it)
            sequences = [(full, ())]
    headers = renderer.role_headers
    with_header = sum(any(_holds(text, s, e, h) for h in headers) for text, spans in sequences for s, e in spans)
    if with_header:
        audit["spans_with_role_header"] = with_header
    return sequences, audit


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
        conversations: dicts with "messages", optional "tools" and optional "id" (used in errors).
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
    from pipeline.chat_template import RENDER_ERRORS

    if options.problems():
        raise SftpackError("; ".join(options.problems()))
    results: list[EncodedExample | None] = [None] * len(conversations)
    rendered: list[tuple[int, list[tuple[str, tuple[Span, ...]]], dict[str, int]]] = []
    for index, conversation in enumerate(conversations):
        name = _conversation_name(conversation, index)
        try:
            sequences, audit = conversation_sequences(renderer, conversation["messages"], conversation.get("tools"),
                                                      options, name)
        except TemplateNotMaskable as err:
            results[index] = EncodedExample(error=str(err), reason="template_not_maskable")
        except RENDER_ERRORS as err:
            results[index] = EncodedExample(error=f"{name}: the chat template failed: {type(err).__name__}: {err}",
                                            reason="template_error")
        else:
            longest = max(len(text) for text, _ in sequences)
            if max_chars is not None and longest > max_chars:
                results[index] = EncodedExample(error=f"{name}: {longest:,} characters cannot fit the token limit",
                                                reason="too_long")
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


def _encode_texts(tokenizer: Any, texts: list[str]) -> list:
    # The Rust tokenizer directly: what tokenizer(texts, add_special_tokens=False) calls, without
    # transformers converting every Encoding to Python lists and dicts first (~40% of encode).
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        backend.no_truncation()
        backend.no_padding()
    return backend.encode_batch(texts, add_special_tokens=False)


def _labelled(encoding: Any, text: str, spans: tuple[Span, ...]) -> EncodedSequence:
    token_ids, token_offsets = encoding.ids, encoding.offsets
    ids = np.fromiter(token_ids, dtype=np.int32, count=len(token_ids))
    offsets = np.fromiter(itertools.chain.from_iterable(token_offsets), dtype=np.int64,
                          count=2 * len(token_offsets)).reshape(-1, 2)
    labels = np.where(token_mask(offsets, spans), ids, np.int32(IGNORE_INDEX)).astype(np.int32)
    return EncodedSequence(ids, labels, text, spans)


# ---------------------------------------------------------------- one render per conversation

_SKELETON_CONTENT = "\ue000{}\ue001"
"""Message k's content in a skeleton: private-use characters no template treats specially."""
_SKELETON_SPLIT = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class _Skeleton:
    """A conversation shape's masks, learnt once on contents replaced by placeholders.

    `parts` is the full rendering as literal text and message indices (placeholders); `spans`
    are trained spans as (part index, offset in that literal part).
    """

    parts: tuple[str | int, ...]
    spans: tuple[tuple[tuple[int, int], tuple[int, int]], ...]
    audit: dict[str, int]

    def fill(self, contents: list[str]) -> tuple[str, tuple[Span, ...]]:
        """The rendering with `contents` in place, and the spans moved with it."""
        starts, pieces, at = [], [], 0
        for part in self.parts:
            piece = part if isinstance(part, str) else contents[part]
            starts.append(at)
            pieces.append(piece)
            at += len(piece)
        return "".join(pieces), tuple((starts[a] + da, starts[b] + db) for (a, da), (b, db) in self.spans)


def _skeleton(renderer: ChatRenderer, roles: tuple[str, ...], tools: Any, options: MaskOptions) -> _Skeleton | None:
    """Masks for this shape on placeholder contents; None when they are not one sequence of the full
    rendering (split conversations and refusals take the per-turn method every time)."""
    from pipeline.chat_template import RENDER_ERRORS

    msgs = [{"role": role, "content": _SKELETON_CONTENT.format(k)} for k, role in enumerate(roles)]
    try:
        full = renderer.render_prepared(msgs, tools, False)
        sequences, audit = _located(renderer, msgs, tools, [None] * len(msgs), full, options, "skeleton")
    except (TemplateNotMaskable, *RENDER_ERRORS):
        return None
    if len(sequences) != 1 or sequences[0][0] != full:
        return None
    pieces = _SKELETON_SPLIT.split(full)  # literal, index, literal, index, ..., literal
    parts = tuple(int(p) if k % 2 else p for k, p in enumerate(pieces))
    bounds, at = [], 0
    for index, part in enumerate(parts):
        size = len(part) if isinstance(part, str) else len(_SKELETON_CONTENT.format(part))
        bounds.append((at, index, isinstance(part, str)))
        at += size
    bounds.append((at, len(parts), True))

    def where(offset: int) -> tuple[int, int] | None:
        for start, index, literal in reversed(bounds):
            if start <= offset:
                return (index, offset - start) if literal or offset == start else None
        return None

    spans = [(where(a), where(b)) for a, b in sequences[0][1]]
    if any(a is None or b is None for a, b in spans):
        return None
    parts += ("",)  # the end bound's part
    return _Skeleton(parts, tuple(spans), audit)


def _from_skeleton(renderer: ChatRenderer, msgs: list[dict], tools: Any, full: str,
                   options: MaskOptions) -> tuple[list[tuple[str, tuple[Span, ...]]], dict[str, int]] | None:
    """Masks from the shape's skeleton when `full` is exactly the skeleton with this conversation's
    contents in place (one string comparison proves the template treated them as opaque text);
    None otherwise (tool calls, reasoning, names, contents the template reads, splits)."""
    if any(m.keys() - {"role", "content"} or not isinstance(m.get("content"), str) for m in msgs):
        return None
    roles = tuple(m["role"] for m in msgs)
    key = (options, roles, None if tools is None else json.dumps(tools, sort_keys=True))
    cache = renderer.memo.setdefault("skeletons", {})
    if key not in cache:
        cache[key] = _skeleton(renderer, roles, tools, options)
    skeleton = cache[key]
    if skeleton is None:
        return None
    text, spans = skeleton.fill([m["content"] for m in msgs])
    if text != full:
        return None
    return [(full, spans)], dict(skeleton.audit)
