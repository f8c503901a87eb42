"""Which text of a conversation the model learns: inference-faithful turn targets, split when needed.

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

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sftpack.errors import SftpackError

TrainOn = Literal["all", "last"]
Turns = Literal["auto", "whole"]
Reasoning = Literal["train", "mask", "drop"]
TRAIN_ON: tuple[str, ...] = TrainOn.__args__
TURNS: tuple[str, ...] = Turns.__args__
REASONING: tuple[str, ...] = Reasoning.__args__
AUDIT_KEYS = ("split_conversations", "split_extra_tokens", "reasoning_not_rendered", "tool_calls_not_rendered",
              "turns_rendered_differently", "turns_without_stop", "spans_with_role_header",
              "assistant_text_not_trained", "turns_marked_untrained")
"""Per-conversation counts `encode_batch` returns, summed into pack's manifest and the report."""
SNIPPET_CHARS = 60
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

Span = tuple[int, int]

if TYPE_CHECKING:  # pack imports this module for its options; a reused pack never loads the template engine
    from sftpack.templates.chat_template import ChatRenderer


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
    own: tuple[str, ...]
    """The turn's own text the template renders (reasoning unless masked, content, tool-call
    names), which must lie inside a trained span (`assistant_text_not_trained` otherwise)."""


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


def own_pieces(message: dict, thought: str | None) -> list[str]:
    """A turn's own text in the order templates write it: reasoning, content, tool-call names."""
    content = message.get("content")
    if isinstance(content, list):  # typed chunks (pipeline/templates/template_forms.py): their text
        content = "".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
    names = [(call.get("function") or {}).get("name") for call in message.get("tool_calls") or []]
    return [p.strip() for p in (thought, content, *names) if isinstance(p, str) and p.strip()]


def own_end(text: str, pieces: list[str], start: int = 0) -> int:
    """Where the last of `pieces`, found in order from `start`, ends in `text` (`start` if none is):
    a stop marker before it is followed by more of the turn, so it does not end the turn."""
    at = start
    for piece in pieces:
        found = text.find(piece, at)
        if found >= 0:
            at = found + len(piece)
    return at


def _turn_start(renderer: ChatRenderer, prompt: str, alone: str, thought: str | None, where: str,
                last_text: str) -> str:
    """The text the model writes after `prompt` for the turn that `alone` (the conversation ending
    at it) renders last, still with whatever follows its stop marker. `last_text`: the content of
    the message before the turn."""
    at = renderer.split_point(prompt, alone)
    body = alone[at:]
    opened = prompt[at:]
    if opened.startswith(THINK_OPEN) or (not opened and prompt.rstrip().endswith(THINK_OPEN) and THINK_CLOSE not in body):
        # The generation prompt opens a think block the rendered turn lacks or never closes (R1, Nemotron).
        opened = opened or prompt[prompt.rindex(THINK_OPEN):]
        return _continue_think_block(opened, body, thought, where, prompt)
    if not opened:
        return body
    last_text = last_text.strip()
    closed = opened.rstrip()
    if last_text and prompt.rfind(last_text) + len(last_text) <= at and renderer.added_re.match(opened) \
            and any(closed.endswith(m.group()) for m in renderer.added_re.finditer(closed)):
        # The prompts part after every message's text, where the generation prompt adds a whole control
        # block the rendered turn lacks (Gemma 4's empty "<|channel>thought\n<channel|>"): the model
        # writes the turn after it.
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
                 thought: str | None, where: str, reasoning_hidden: bool) -> tuple[_Target, dict[str, int]]:
    """F_i for assistant message i (module docstring), and what it could not render."""
    prompt = renderer.render_prepared(msgs[:i], tools, True)
    alone = full if i == len(msgs) - 1 else renderer.render_prepared(msgs[: i + 1], tools, False)
    before = msgs[i - 1].get("content") if i else None
    body = _turn_start(renderer, prompt, alone, thought, where, before if isinstance(before, str) else "")
    audit: dict[str, int] = {}
    pieces = own_pieces(msgs[i], thought)
    end = renderer.first_stop_end(body, own_end(body, pieces))
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
    hidden = thought.strip() if thought and reasoning_hidden else None
    own = tuple(p for p in pieces if p in body and p != hidden)
    return _Target(i, len(prompt), text, reasoning, trained, own), audit


def _whole_span(renderer: ChatRenderer, full: str, target: _Target, msgs: list[dict]) -> tuple[Span, Span | None, bool]:
    """Turn `target` as the full rendering S has it: (span, reasoning span, rendered as F_i).

    Its end is the first stop marker after its own text; where S writes none before the next
    message (gpt-oss ends earlier answers with <|end|>), the control token S ends the turn with."""
    if full.startswith(target.text):
        return (target.prompt_end, len(target.text)), target.reasoning, True
    start = renderer.split_point(target.text[: target.prompt_end], full)
    rest = full[start:]
    after = own_end(rest, list(target.own))
    end = renderer.first_stop_end(rest, after)
    following = msgs[target.index + 1].get("content") if target.index + 1 < len(msgs) else None
    limit = rest.find(following.strip(), after) if isinstance(following, str) and following.strip() else -1
    if limit >= 0 and (end is None or end > limit):
        marker = renderer.added_re.search(rest, after, limit)
        end = marker.end() if marker else after
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


def _untrained_text(sequences: list[tuple[str, tuple[Span, ...]]], targets: list[_Target]) -> int:
    """Trained turns with own text (rendered) that lies in no trained span of the sequences."""
    trained = [text[s:e] for text, spans in sequences for s, e in spans]
    return sum(any(not any(piece in span for span in trained) for piece in t.own) for t in targets if t.trained)


def located_sequences(renderer: ChatRenderer, msgs: list[dict], tools: Any, thoughts: list[str | None], full: str,
                      options: MaskOptions, name: str, untrained: frozenset[int] = frozenset(),
                      ) -> tuple[list[tuple[str, tuple[Span, ...]]], dict[str, int]]:
    """The module docstring's method: renders of every turn's prompt and of the conversation ending
    at it, for prepared messages whose full rendering is `full`. `untrained`: message indices of
    assistant turns marked `"train": false`, left untrained."""
    assistant = [i for i, m in enumerate(msgs) if m.get("role") == "assistant"]
    if options.train_on == "last":
        assistant = assistant[-1:]
    assistant = [i for i in assistant if i not in untrained]
    audit: dict[str, int] = {}
    targets = []
    for i in assistant:
        target, counts = _turn_target(renderer, msgs, tools, full, i, thoughts[i],
                                      f"{name}, assistant turn messages[{i}]", options.reasoning == "mask")
        targets.append(target)
        for key, value in counts.items():
            audit[key] = audit.get(key, 0) + value
    if options.turns == "whole":
        trained = [_whole_span(renderer, full, t, msgs) for t in targets]
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
    if options.turns == "whole":  # only what S renders: what it strips is turns_rendered_differently
        targets = [dataclasses.replace(t, own=tuple(p for p in t.own if p in full)) for t in targets]
    not_trained = _untrained_text(sequences, targets)
    if not_trained:
        audit["assistant_text_not_trained"] = not_trained
    return sequences, audit
