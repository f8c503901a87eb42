"""One line of messages JSONL: parse it, check its shape and its conversation, say what is wrong.

Three layers; each runs only when the one before found nothing (it assumes what they established):

    raw bytes --parse_line--> JSON object --schema_errors--> shaped record --ROW_CHECKS--> ok
              (invalid_utf8,               (schema_<keyword>,             (no_assistant_turn,
               invalid_json, not_object,    JSON path of each error)       empty_assistant, ...)
               trailing_garbage)

`classify_line` runs all three (validate and report call it per line); `tokenizer_checks` are
built per tokenizer and appended by the caller.

Conversation rules (the `role_order` rule and its neighbours), chosen so that every chat
template renders the conversation and every trained turn answers something:
  - at most one system message, and only first (`system_not_first`);
  - the first turn after the system message is the user's (`role_order`);
  - user is followed by assistant; assistant by user, or by its tool results when it made
    tool calls (an unanswered call is only allowed as the very last turn); tool results by
    more tool results (one per call at most) or by assistant (`role_order`, `tool_without_call`);
  - the last turn is the assistant's: a trailing user or tool turn trains nothing (`role_order`);
  - at least one assistant turn (`no_assistant_turn`), none empty unless it calls tools
    (`empty_assistant`), and only assistant turns carry `tool_calls` (`tool_calls_not_assistant`)
    or reasoning (`reasoning_not_assistant`) or a per-turn `train` flag (`train_not_assistant`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import msgspec

from sftpack.checks.schema import schema_fast_type, schema_validator
from sftpack.io.lines import parse_line
from sftpack.records import ROLES, Record, RowError, shorten
from sftpack.templates.fields import REASONING_FIELDS, TRAIN_FLAG

Check = Callable[[Record], Iterable[RowError]]


# ---------------------------------------------------------------- layer 2: JSON Schema
# The record's shape as schemas/messages.schema.json says (pipeline/checks/schema.py: jsonschema,
# the authority, after its msgspec fast path).

def _pointer(path: Iterable[Any]) -> str:
    return "".join(f"/{str(part).replace('~', '~0').replace('/', '~1')}" for part in path)


def schema_errors(record: Any, fast: bool = True) -> list[RowError]:
    """Every JSON Schema violation in `record`, each with its JSON pointer.

    Args:
        record: a parsed line.
        fast: try `schema_fast_type` first. False asks jsonschema straight away (the reference
            the fast path is tested against); the result is the same.

    Returns:
        Errors with rule `schema_<keyword>` (schema_required, schema_type, schema_enum, ...),
        in document order.
    """
    fast_type = schema_fast_type() if fast else None
    if fast_type is not None:
        try:
            msgspec.convert(record, fast_type)
            return []
        except Exception:  # noqa: BLE001 - whatever the fast path says against a row, jsonschema decides
            pass
    errors = []
    for err in schema_validator().iter_errors(record):
        path = _pointer(err.absolute_path)
        message = shorten(err.message)
        if err.validator == "enum" and path.endswith("/role"):
            message += "; map other role names (human -> user, gpt -> assistant): --role-map user=human,assistant=gpt"
        errors.append((list(map(str, err.absolute_path)), RowError(path, f"schema_{err.validator}", message)))
    # Natural document order: /messages/2 before /messages/10.
    errors.sort(key=lambda item: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in item[0]])
    return [error for _, error in errors]


# ---------------------------------------------------------------- layer 3: conversation rules
# Each check takes a schema-valid record and yields errors; CONVERSATION_RULES is the order they run.

def check_has_assistant(record: Record) -> Iterable[RowError]:
    if not any(m["role"] == "assistant" for m in record["messages"]):
        yield RowError("/messages", "no_assistant_turn", "no assistant turn, so nothing to train on; add the "
                                                           "assistant's answer or drop the line")


def check_assistant_content(record: Record) -> Iterable[RowError]:
    for i, message in enumerate(record["messages"]):
        if message["role"] == "assistant" and not message.get("tool_calls") and not message["content"].strip():
            yield RowError(f"/messages/{i}/content", "empty_assistant",
                           "assistant content is empty or whitespace and it makes no tool calls")


def check_tool_calls_role(record: Record) -> Iterable[RowError]:
    for i, message in enumerate(record["messages"]):
        if message.get("tool_calls") and message["role"] != "assistant":
            yield RowError(f"/messages/{i}/tool_calls", "tool_calls_not_assistant",
                           f"a {message['role']} message carries tool_calls; only assistant turns call tools")


# Message fields only assistant turns may carry: (rule, why).
ASSISTANT_ONLY = {**dict.fromkeys(REASONING_FIELDS, ("reasoning_not_assistant", "only assistant turns reason")),
                  TRAIN_FLAG: ("train_not_assistant", "only assistant turns are trained or not")}


def check_reasoning_role(record: Record) -> Iterable[RowError]:
    for i, message in enumerate(record["messages"]):
        for field, (rule, why) in ASSISTANT_ONLY.items():
            if message.get(field) is not None and message["role"] != "assistant":
                yield RowError(f"/messages/{i}/{field}", rule, f"a {message['role']} message carries {field}; {why}")


def check_system_first(record: Record) -> Iterable[RowError]:
    for i, message in enumerate(record["messages"]):
        if message["role"] == "system" and i > 0:
            yield RowError(f"/messages/{i}/role", "system_not_first",
                           "system message is not the first message; merge it into the first one")


def check_tool_results(record: Record) -> Iterable[RowError]:
    open_calls = 0  # tool calls of the latest assistant turn not yet answered by a tool result
    for i, message in enumerate(record["messages"]):
        if message["role"] == "tool":
            if open_calls == 0:
                yield RowError(f"/messages/{i}", "tool_without_call",
                               "tool result without a preceding assistant tool call (or more results than calls)")
            open_calls = max(open_calls - 1, 0)
        else:
            open_calls = len(message.get("tool_calls") or ()) if message["role"] == "assistant" else 0


# role -> roles that may follow it; "assistant+calls" is an assistant turn with tool_calls.
_NEXT = {
    "start": {"user"},
    "user": {"assistant"},
    "assistant": {"user"},
    "assistant+calls": {"tool"},
    "tool": {"tool", "assistant"},
}


_DESCRIBE = {"start": "the start", "user": "a user turn", "assistant": "an assistant turn",
             "assistant+calls": "an assistant tool call", "tool": "a tool result"}


def check_role_order(record: Record) -> Iterable[RowError]:
    messages = record["messages"]
    state = "start"
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            continue  # placement is system_not_first's job
        if role == "tool" and state not in ("assistant+calls", "tool"):
            state = "tool"
            continue  # tool_without_call reports it
        if role not in _NEXT[state]:
            hint = "; merge consecutive turns of one role" if state == role else ""
            yield RowError(f"/messages/{i}/role", "role_order", f"{role} turn after {_DESCRIBE[state]}; expected "
                           f"{' or '.join(sorted(_NEXT[state]))}{hint}")
        state = "assistant+calls" if role == "assistant" and message.get("tool_calls") else role
    last = messages[-1]["role"]
    if last in ("user", "tool") and any(m["role"] == "assistant" for m in messages):
        yield RowError(f"/messages/{len(messages) - 1}/role", "role_order",
                       f"conversation ends with a {last} turn, which trains nothing; drop it or add the "
                       "assistant's reply")


CONVERSATION_RULES: list[Check] = [
    check_has_assistant,
    check_assistant_content,
    check_tool_calls_role,
    check_reasoning_role,
    check_system_first,
    check_tool_results,
    check_role_order,
]
"""The conversation rules in the order their errors are listed."""


def _passes_rules(messages: list[dict[str, Any]]) -> bool:
    # All of CONVERSATION_RULES in one pass, for the common case: True only where none of them
    # finds anything (tests/test_validate.py checks this on generated conversations). False may
    # be wrong-footed by an unusual shape; the rules themselves then decide and write the errors.
    state, open_calls, assistant = "start", 0, False
    for i, message in enumerate(messages):
        role, calls = message["role"], message.get("tool_calls")
        if role == "assistant":
            if not calls and not message["content"].strip():
                return False
            assistant = True
        elif calls or any(message.get(field) is not None for field in ASSISTANT_ONLY):
            return False
        if role == "system":
            if i:
                return False
            continue
        if role == "tool":
            if open_calls == 0 or state not in ("assistant+calls", "tool"):
                return False
            open_calls -= 1
            state = "tool"
            continue
        if role not in _NEXT[state]:
            return False
        open_calls = len(calls or ()) if role == "assistant" else 0
        state = "assistant+calls" if role == "assistant" and calls else role
    return assistant and messages[-1]["role"] not in ("user", "tool")


def check_conversation(record: Record) -> Iterable[RowError]:
    """Every error of CONVERSATION_RULES, in their order; one pass when there is none."""
    if _passes_rules(record["messages"]):
        return ()
    return [error for rule in CONVERSATION_RULES for error in rule(record)]


ROW_CHECKS: list[Check] = [check_conversation]
"""The checks of a schema-valid record that need no tokenizer."""


# ---------------------------------------------------------------- checks that need a tokenizer

def control_token_check(tokenizer: Any) -> Check:
    """A check rejecting message content that holds the tokenizer's special or added tokens.

    Such text (`<|im_end|>` inside a user turn) tokenizes to the control token itself, so it
    silently ends turns early or opens new ones. Every role's content is checked.

    Args:
        tokenizer: a transformers tokenizer.

    Returns:
        The check (rule `control_token`).
    """
    tokens = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None

    def check_control_tokens(record: Record) -> Iterable[RowError]:
        if pattern is None:
            return
        for i, message in enumerate(record["messages"]):
            found = pattern.search(message["content"])
            if found:
                yield RowError(f"/messages/{i}/content", "control_token",
                               f"content contains {found.group()!r}, which the tokenizer reads as a control token "
                               f"(at character {found.start()}); remove or escape it")

    return check_control_tokens


def template_check(renderer: Any) -> Check:
    """A check rejecting conversations the tokenizer's chat template cannot render (rule
    `template_error`, message = the template's exception text; the record's kwargs used). Renders as
    pack does (`renderer`, a ChatRenderer: a template that loops over `tools` gets [] for a record without them)."""

    from sftpack.templates.chat_template import with_string_arguments
    from sftpack.templates.masking import argument_hint

    def check_template(record: Record) -> Iterable[RowError]:
        messages, tools, kwargs = record["messages"], record.get("tools") or None, record.get("chat_template_kwargs")
        try:
            with_string_arguments(renderer, messages, lambda: renderer.render(messages, tools, kwargs=kwargs))
        except Exception as err:  # noqa: BLE001 - a template is user code; whatever it raises is the reject
            yield RowError("/messages", "template_error", f"chat template failed: "
                           f"{shorten(str(err) or type(err).__name__)}{argument_hint(renderer, record)}")

    return check_template


def tokenizer_checks(tokenizer: Any, renderer: Any) -> list[Check]:
    """The tokenizer-dependent checks, in the order they run (after ROW_CHECKS); `renderer` is the
    ChatRenderer pack will use (templates.tokenizer.load_renderer)."""
    return [control_token_check(tokenizer), template_check(renderer)]


# ---------------------------------------------------------------- one line, all layers

def first_reject(record: dict | None, error: RowError | None, checks: list[Check]) -> RowError | None:
    """The first problem validate would report for one record, or None when validate keeps it.

    The same layers in the same order as validate's `check_row` (the reader's parse or conversion
    error, the JSON Schema, then `checks`), stopping at the first error: pack and report count a
    record once, under its first rule.

    Args:
        record: the record in messages form; None when it could not be read or converted.
        error: the reader's error for it (`Row.error`), if any.
        checks: conversation checks for a schema-valid record, in order (ROW_CHECKS, then
            control_token_check for the tokenizer in use).

    Returns:
        The first RowError, or None.
    """
    if error is not None:
        return error
    errors = schema_errors(record)  # the fast path decides almost every row; jsonschema only for bad ones
    if errors:
        return errors[0]
    for check in checks:
        for found in check(record):
            return found
    return None



def classify_line(raw: bytes, checks: list[Check] | None = None,
                  max_errors: int = 20) -> tuple[Record | None, list[RowError]]:
    """Parse and check one raw JSONL line.

    Args:
        raw: the line's bytes (line ending optional). Blank lines are the caller's business.
        checks: conversation checks to run on a schema-valid record; ROW_CHECKS by default,
            `ROW_CHECKS + tokenizer_checks(tok, renderer)` to include the template.
        max_errors: keep at most this many errors (the rest are summarised in one more).

    Returns:
        (record, errors). The record is None when the line is not a JSON object. The line
        is valid when errors is empty.
    """
    record, errors = parse_line(raw)
    if record is None:
        return None, errors
    errors = schema_errors(record)
    if not errors:
        for check in ROW_CHECKS if checks is None else checks:
            errors.extend(check(record))
    if len(errors) > max_errors:
        extra = len(errors) - max_errors
        errors = errors[:max_errors] + [RowError("", "too_many_errors", f"{extra} more errors not shown")]
    return record, errors
