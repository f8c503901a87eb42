"""The forms a chat template reads its data in, found by probe renders (never by name or source).

Templates disagree on how a conversation's parts are given to them; each form below is decided
once per template by rendering a small probe conversation both ways:

  tools_when_none     `[]` where the template iterates `tools` and fails on None (Hermes), which
                      `apply_chat_template` passes for a conversation without tools
  bare_tool_schemas   tool schemas as bare `{name, description, parameters}` dicts, for templates
                      that read `tool.name` and render nothing (or fail) on the
                      `{"type": "function", "function": {...}}` wrapper
  reasoning_chunks    reasoning as typed content chunks, `[{"type": "thinking", "thinking": r},
                      {"type": "text", "text": answer}]`, for templates that read it that way
                      (Mistral's Magistral style) and not from `reasoning_content`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_DESCRIPTION = "sftpack-probe-description"
_TOOLS = [{"type": "function", "function": {"name": "sftpack_probe_tool", "description": _DESCRIPTION,
                                            "parameters": {"type": "object", "properties": {}}}}]
_THOUGHT, _ANSWER = "sftpack-probe-thought", "sftpack-probe-answer"
_PLAIN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _ANSWER}]


@dataclass(frozen=True)
class TemplateForms:
    """How one template reads tools and reasoning (module docstring)."""

    tools_when_none: list | None = None
    bare_tool_schemas: bool = False
    reasoning_chunks: bool = False

    def tools(self, tools: list[dict] | None) -> list[dict] | None:
        """A conversation's tool schemas in the form the template reads."""
        if tools is None:
            return None if self.tools_when_none is None else list(self.tools_when_none)
        if self.bare_tool_schemas:
            return [tool.get("function", tool) if isinstance(tool, dict) else tool for tool in tools]
        return tools

    def with_reasoning(self, message: dict, thought: str) -> dict:
        """An assistant message carrying `thought`, in the form the template reads (its content
        becomes typed chunks where the template reads reasoning from them)."""
        if not self.reasoning_chunks:
            return message
        text = message.get("content") if isinstance(message.get("content"), str) else ""
        return message | {"content": [{"type": "thinking", "thinking": thought}, {"type": "text", "text": text}]}


def _renders(renderer: Any, messages: list[dict], tools: Any, *needles: str) -> bool | None:
    """Whether the probe renders every needle; None when the template raises on it."""
    text = renderer.try_render(messages, {"tools": tools})
    return None if text is None else all(needle in text for needle in needles)


def probe_forms(renderer: Any) -> TemplateForms:
    """The forms `renderer`'s template reads, from a few probe renders (with its template arguments).
    `renderer` is the ChatRenderer being built (typed Any: chat_template imports this module)."""
    none_tools = None
    if _renders(renderer, _PLAIN, None) is None and _renders(renderer, _PLAIN, []) is not None:
        none_tools = []
    bare = False
    if not _renders(renderer, _PLAIN, _TOOLS, _DESCRIPTION):
        bare = bool(_renders(renderer, _PLAIN, [t["function"] for t in _TOOLS], _DESCRIPTION))
    fields = [_PLAIN[0], dict(_PLAIN[1], reasoning_content=_THOUGHT, reasoning=_THOUGHT, thinking=_THOUGHT)]
    chunks = False
    if not _renders(renderer, fields, none_tools, _THOUGHT):
        chunked = [_PLAIN[0], {"role": "assistant", "content": [{"type": "thinking", "thinking": _THOUGHT},
                                                                  {"type": "text", "text": _ANSWER}]}]
        text = renderer.try_render(chunked, {"tools": none_tools}) or ""
        # Read as chunks, not printed as a list (a template writing `message.content | trim` shows the repr)
        chunks = _THOUGHT in text and _ANSWER in text and "'type'" not in text and '"type"' not in text
    return TemplateForms(none_tools, bare, chunks)
