"""TRL's prompt-completion layout as messages: the prompt is context, the completion's assistant turns are trained.

    conversational  {"prompt": [{role, content}, ...], "completion": [{"role": "assistant", ...}, ...]}
    standard        {"prompt": "...", "completion": "..."}

A prompt string becomes one user turn, a completion string one assistant turn (either side may be
a string or a list of messages); the messages are the prompt's, then the completion's, so the
record packs to the same `input_ids` and `labels` as the equivalent messages record. Unlike TRL,
which trains a standard (string) record as plain text, sftpack renders it with the chat template,
as it does alpaca. Assistant turns inside a conversational prompt are context, as in TRL: they
get `"train": false` (the per-turn flag), unless the record already says otherwise. TRL trains
every token after the prompt; here the completion is masked as any messages record is: its
assistant turns up to their stop token, never its user turns, role headers or the text after a stop
token (README "prompt_completion", asserted against TRL in tests/test_trl_layouts.py).
"""

from __future__ import annotations

from typing import Any

from sftpack.records import RowError

KEYS = ("prompt", "completion")
_ROLE = {"prompt": "user", "completion": "assistant"}


def prompt_completion_messages(source: dict[str, Any]) -> tuple[list[dict] | None, RowError | None]:
    """The messages of one prompt-completion record (module docstring).

    Args:
        source: the record as read.

    Returns:
        (messages, None) or (None, error naming the field: rules convert_missing, convert_type).
    """
    messages: list[dict] = []
    for key in KEYS:
        value = source.get(key)
        if value is None:
            return None, RowError(f"/{key}", "convert_missing", f"no {key!r} field")
        if isinstance(value, str):
            messages.append({"role": _ROLE[key], "content": value})
        elif isinstance(value, list):
            for i, turn in enumerate(value):
                if not isinstance(turn, dict):
                    return None, RowError(f"/{key}/{i}", "convert_type", f"{key}[{i}] is a {type(turn).__name__}, "
                                                                         "expected a message {role, content}")
                if key == "prompt" and turn.get("role") == "assistant" and "train" not in turn:
                    turn = {**turn, "train": False}  # the prompt is context, never trained
                messages.append(turn)
        else:
            return None, RowError(f"/{key}", "convert_type", f"{key} is a {type(value).__name__}, expected a string "
                                                             "or a list of messages")
    return messages, None
