"""One render per conversation: masks learnt once per conversation shape, on placeholder contents.

A shape is the roles in order, the tools and the mask options. Its skeleton is the full rendering
with every message's content replaced by a placeholder, masked once by the per-turn method
(pipeline/templates/turn_targets.py). A conversation of that shape is then rendered once; if that rendering
equals the skeleton with the conversation's contents in place (one string comparison, which proves
the template treated the contents as opaque text), its trained spans are the skeleton's, moved by
the contents' lengths. Otherwise (a template that trims or reads the content, tool calls,
reasoning, names, split conversations) the per-turn method runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sftpack.templates.turn_targets import MaskOptions, Span, TemplateNotMaskable, located_sequences

if TYPE_CHECKING:
    from sftpack.templates.chat_template import ChatRenderer

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
    from sftpack.templates.chat_template import RENDER_ERRORS

    msgs = [{"role": role, "content": _SKELETON_CONTENT.format(k)} for k, role in enumerate(roles)]
    try:
        full = renderer.render_prepared(msgs, tools, False)
        sequences, audit = located_sequences(renderer, msgs, tools, [None] * len(msgs), full, options, "skeleton")
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


MAX_SKELETONS = 4096
"""Shapes remembered per template; past it, new shapes take the per-turn method (same masks)."""


def from_skeleton(renderer: ChatRenderer, msgs: list[dict], tools: Any, full: str,
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
        # A shape seen once (tool conversations: every tools list is its own shape) is not worth the
        # skeleton's own per-turn renders; learn it on its second sighting, and keep both bounded.
        seen = renderer.memo.setdefault("shapes_seen", set())
        if key not in seen or len(cache) >= MAX_SKELETONS:
            if len(seen) < MAX_SKELETONS:
                seen.add(key)
            return None
        cache[key] = _skeleton(renderer, roles, tools, options)
    skeleton = cache[key]
    if skeleton is None:
        return None
    text, spans = skeleton.fill([m["content"] for m in msgs])
    if text != full:
        return None
    return [(full, spans)], dict(skeleton.audit)

