"""How a record becomes messages: the layouts an input may be written in, and their conversion.

Each input has one layout, taken from its first record's keys unless `format` names it
(`detect_layout`):

    messages   {"messages": [{role, content, tool_calls?, ...}], "tools"?, "id"?, "source"?}
               (a `messages` list whose turns have `from` reads as sharegpt)
    sharegpt   {"conversations": [{from, value}], "system"?, "tools"?}
    alpaca     {"instruction", "input"?, "output", "system"?, "history"?, "tools"?}
    prompt_completion  TRL's {"prompt", "completion"}: strings or lists of messages (io/prompt_completion.py)

A first record with none of these keys is an error naming the keys found and the layouts accepted.

Conversion rules (the record in messages form is what validate checks and what pack templates):
  - messages: the record as it is. From a JSONL container that is the parsed line, byte for byte
    what validate has always kept. From an Arrow container (Parquet, save_to_disk, a dataset) null
    values are dropped at every depth first: Arrow gives every row every key any row of the column
    has, null where the row had none (so `tool_calls: null` on plain turns, or another call's
    argument names in `arguments`); dropping them (containers.drop_nulls) gives back the record
    as it was written.
  - sharegpt: each turn's `from` maps to a role: human/user -> user, gpt/assistant -> assistant,
    system -> system, observation/tool -> tool (content = value), and function_call -> an assistant
    turn with empty content whose `tool_calls` come from `value` parsed as JSON: one
    {"name", "arguments"} object or a list of them, each becoming
    {"type": "function", "function": {"name", "arguments"}}; arguments stay a JSON object (a string
    holding a JSON object is parsed into it). A non-empty `system` column becomes a first system
    turn (as in LLaMA-Factory).
  - alpaca: system turn from `system` when non-empty; each `history` pair [user, assistant] becomes
    an earlier user turn and assistant turn; then the user turn, whose content is `instruction` and
    `input` joined by a single "\\n", leaving out an empty part (so just `instruction` when `input`
    is empty or missing), and the assistant turn `output`. The single newline is LLaMA-Factory's
    AlpacaDatasetConverter's ("\\n".join of the non-empty parts): a dataset prepared for it gives
    the same prompts here.
  - both converted layouts: `tools` (a list, or a string holding a JSON list) becomes the record's
    `tools`; an entry without `"type": "function"` ({name, description, parameters}, as LLaMA-Factory
    writes them) is wrapped as {"type": "function", "function": entry}; an empty string or list means
    no tools. `id` and `source` are kept; other columns are dropped.
  - a column map (`ColumnMap`: which field holds the turns, which keys hold role and content, extra
    role names) adjusts the messages or sharegpt layout for data written otherwise (as
    LLaMA-Factory's `columns`/`tags` and axolotl's `field_messages`/`message_property_mappings`/
    `roles` do); a messages layout with a column map is converted like sharegpt, keeping each turn's
    `tool_calls`, `tool_call_id` and `name`.

A record that cannot be converted gives a RowError naming the field (`/conversations/3/from`);
the reader (pipeline/io/readers.py) adds where the row was.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from sftpack.errors import SftpackError, json_error_text
from sftpack.records import ROLES, Record, RowError
from sftpack.io.prompt_completion import prompt_completion_messages


LAYOUTS = ("messages", "sharegpt", "alpaca", "prompt_completion")
FORMATS = ("auto", *LAYOUTS)
TARGETS = (*ROLES, "function_call")
"""What a role name in the data may map to: a messages role, or function_call (an assistant tool call)."""
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "function_call", "observation": "tool", "tool": "tool"}
_CARRIED_TURN_KEYS = ("tool_calls", "tool_call_id", "name")


# ---------------------------------------------------------------- column maps

@dataclass(frozen=True)
class ColumnMap:
    """Where a layout's parts are in data written otherwise; None keeps the layout's own name."""

    messages: str | None = None
    """Field holding the list of turns (messages layout: `messages`; sharegpt: `conversations`)."""
    role: str | None = None
    """Key of a turn naming its speaker (messages: `role`; sharegpt: `from`)."""
    content: str | None = None
    """Key of a turn holding its text (messages: `content`; sharegpt: `value`)."""
    roles: tuple[tuple[str, str], ...] = ()
    """(name in the data, role it maps to) pairs, added to the layout's own names; see TARGETS."""
    system: str | None = None
    """Column holding a system prompt put first (sharegpt and alpaca: `system`; messages: none)."""
    tools: str | None = None
    """Column holding the tool definitions (default `tools`)."""

    def is_default(self) -> bool:
        return self == ColumnMap()


def parse_role_map(text: str) -> tuple[tuple[str, str], ...]:
    """`user=human,assistant=gpt` -> (("human", "user"), ("gpt", "assistant")).

    Args:
        text: comma-separated ROLE=NAME pairs; a role may be given several names.

    Returns:
        (name in the data, role) pairs for `ColumnMap.roles`.

    Raises:
        SftpackError: a pair without `=` or a role outside TARGETS (exit 2).
    """
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, sep, name = (s.strip() for s in item.partition("="))
        if not sep or not role or not name:
            raise SftpackError(f"--role-map {item!r}: expected ROLE=NAME, e.g. user=human,assistant=gpt")
        if role not in TARGETS:
            raise SftpackError(f"--role-map {item!r}: {role!r} is not one of {', '.join(TARGETS)}")
        pairs.append((name, role))
    return tuple(pairs)


# ---------------------------------------------------------------- conversion

def _error(path: str, rule: str, message: str) -> tuple[None, RowError]:
    return None, RowError(path, rule, message)


def _pointer(*parts: Any) -> str:
    return "".join(f"/{part}" for part in parts)


def convert_tools(value: Any, column: str) -> tuple[list | None, RowError | None]:
    """A tools column (list, or string holding a JSON list) as messages-form `tools`.

    Args:
        value: the column's value (None, "", a list or a JSON string).
        column: its name, for errors.

    Returns:
        (tools or None when there are none, None) or (None, error with rule convert_tools).
    """
    if value is None or value == "" or value == []:
        return None, None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            return _error(_pointer(column), "convert_tools", f"{column} is not JSON ({json_error_text(err)}); "
                                                             "expected a JSON list of functions")
    if not isinstance(value, list):
        return _error(_pointer(column), "convert_tools", f"{column} is a {type(value).__name__}, expected a "
                                                         "list of functions")
    tools = []
    for i, entry in enumerate(value):
        if isinstance(entry, dict) and entry.get("type") == "function" and "function" in entry:
            tools.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            tools.append({"type": "function", "function": entry})  # LLaMA-Factory's bare {name, ...}
        else:
            return _error(_pointer(column, i), "convert_tools", f"{column}[{i}] is neither "
                          '{"type": "function", "function": {...}} nor {"name": ..., "parameters": ...}')
    return tools or None, None


def _one_call(call: Any, where: str, path: str) -> tuple[dict | None, RowError | None]:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return _error(path, "convert_tool_call", f'{where}: expected {{"name": ..., "arguments": {{...}}}}, got '
                                                 f"{json.dumps(call, ensure_ascii=False)[:80]}")
    arguments = call.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # reported below as not an object
    if not isinstance(arguments, dict):
        return _error(path, "convert_tool_call", f"{where}: arguments of {call['name']!r} are not a JSON object")
    return {"type": "function", "function": {"name": call["name"], "arguments": arguments}}, None


def convert_tool_calls(value: Any, where: str, path: str) -> tuple[list | None, RowError | None]:
    """A sharegpt function_call turn's value as OpenAI-style `tool_calls`.

    Args:
        value: the turn's value: a JSON string (or already parsed) holding one {"name", "arguments"}
            object or a list of them.
        where: the turn as named in messages (`conversations[3].value`).
        path: its JSON pointer.

    Returns:
        (tool_calls, None) or (None, error with rule convert_tool_call).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            return _error(path, "convert_tool_call", f"{where} is not JSON ({json_error_text(err)}); "
                                                     'expected {"name": ..., "arguments": {...}}')
    calls = []
    for call in value if isinstance(value, list) else [value]:
        converted, error = _one_call(call, where, path)
        if error:
            return None, error
        calls.append(converted)
    if not calls:
        return _error(path, "convert_tool_call", f"{where} is an empty list of calls")
    return calls, None


@dataclass(frozen=True)
class TurnsLayout:
    """A layout whose record holds a list of turns: messages, sharegpt, or one set by a ColumnMap."""

    messages: str
    role: str
    content: str
    roles: dict[str, str]
    system: str | None
    tools: str


def turns_layout(layout: str, columns: ColumnMap) -> TurnsLayout:
    """The messages or sharegpt layout with `columns` applied over its own names."""
    sharegpt = layout == "sharegpt"
    return TurnsLayout(
        messages=columns.messages or ("conversations" if sharegpt else "messages"),
        role=columns.role or ("from" if sharegpt else "role"),
        content=columns.content or ("value" if sharegpt else "content"),
        roles=(dict(SHAREGPT_ROLES) if sharegpt else {r: r for r in ROLES}) | dict(columns.roles),
        system=columns.system or ("system" if sharegpt else None),
        tools=columns.tools or "tools",
    )


def _system_turn(record: Record, column: str | None) -> tuple[list[dict], RowError | None]:
    value = record.get(column) if column else None
    if value is None or value == "":
        return [], None
    if not isinstance(value, str):
        return [], RowError(_pointer(column), "convert_type", f"{column} is a {type(value).__name__}, expected a "
                                                              "string")
    return [{"role": "system", "content": value}], None


def _convert_turn(turn: Any, i: int, layout: TurnsLayout) -> tuple[dict | None, RowError | None]:
    where, path = f"{layout.messages}[{i}]", _pointer(layout.messages, i)
    if not isinstance(turn, dict):
        return _error(path, "convert_type", f"{where} is a {type(turn).__name__}, expected an object")
    name, content = turn.get(layout.role), turn.get(layout.content)
    role = layout.roles.get(name) if isinstance(name, str) else None
    if role is None:
        return _error(_pointer(layout.messages, i, layout.role), "convert_role",
                      f"{where}.{layout.role} {name!r} is not one of {', '.join(layout.roles)}; map it with "
                      "--role-map ROLE=NAME")
    if content is None and turn.get("tool_calls"):
        content = ""  # OpenAI writes null content beside tool calls
    if not isinstance(content, str):
        return _error(_pointer(layout.messages, i, layout.content), "convert_type",
                      f"{where}.{layout.content} is {type(content).__name__}, expected a string")
    if role == "function_call":
        calls, error = convert_tool_calls(content, f"{where}.{layout.content}",
                                          _pointer(layout.messages, i, layout.content))
        return (None, error) if error else ({"role": "assistant", "content": "", "tool_calls": calls}, None)
    message = {"role": role, "content": content}
    message.update((k, turn[k]) for k in _CARRIED_TURN_KEYS if turn.get(k) is not None)
    return message, None


def _finish(source: Record, messages: list[dict], tools_column: str) -> tuple[Record | None, RowError | None]:
    record = {k: source[k] for k in ("id", "source") if source.get(k) is not None}
    record["messages"] = messages
    tools, error = convert_tools(source.get(tools_column), tools_column)
    if error:
        return None, error
    if tools:
        record["tools"] = tools
    return record, None


def convert_turns(source: Record, layout: TurnsLayout) -> tuple[Record | None, RowError | None]:
    """A sharegpt (or column-mapped) record in messages form.

    Args:
        source: the record as read.
        layout: where its turns, roles and contents are.

    Returns:
        (record, None) or (None, error naming the field: rules convert_missing, convert_type,
        convert_role, convert_tool_call, convert_tools).
    """
    turns = source.get(layout.messages)
    if turns is None:
        return _error(_pointer(layout.messages), "convert_missing", f"no {layout.messages!r} field")
    if not isinstance(turns, list):
        return _error(_pointer(layout.messages), "convert_type",
                      f"{layout.messages} is a {type(turns).__name__}, expected a list of turns")
    messages, error = _system_turn(source, layout.system)
    if error:
        return None, error
    for i, turn in enumerate(turns):
        message, error = _convert_turn(turn, i, layout)
        if error:
            return None, error
        messages.append(message)
    return _finish(source, messages, layout.tools)


def _text(source: Record, key: str, required: bool) -> tuple[str, RowError | None]:
    value = source.get(key)
    if value is None and not required:
        return "", None
    if value is None:
        return "", RowError(_pointer(key), "convert_missing", f"no {key!r} field")
    if not isinstance(value, str):
        return "", RowError(_pointer(key), "convert_type", f"{key} is a {type(value).__name__}, expected a string")
    return value, None


def convert_alpaca(source: Record, columns: ColumnMap) -> tuple[Record | None, RowError | None]:
    """An alpaca record in messages form (rules in the module docstring).

    Args:
        source: {"instruction", "input"?, "output", "system"?, "history"?, "tools"?}.
        columns: its `system` and `tools` name other columns for those parts.

    Returns:
        (record, None) or (None, error naming the field).
    """
    texts = {}
    for key, required in (("instruction", True), ("input", False), ("output", True)):
        texts[key], error = _text(source, key, required)
        if error:
            return None, error
    messages, error = _system_turn(source, columns.system or "system")
    if error:
        return None, error
    history = source.get("history") or []
    if not isinstance(history, list):
        return _error("/history", "convert_type", f"history is a {type(history).__name__}, expected a list of "
                                                  "[user, assistant] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            return _error(_pointer("history", i), "convert_type", f"history[{i}] is not a [user, assistant] pair "
                                                                  "of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = "\n".join(part for part in (texts["instruction"], texts["input"]) if part)
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": texts["output"]}]
    return _finish(source, messages, columns.tools or "tools")


def convert_prompt_completion(source: Record, columns: ColumnMap) -> tuple[Record | None, RowError | None]:
    """A prompt-completion record (TRL's layout) in messages form: the prompt's turns, then the completion's."""
    messages, error = prompt_completion_messages(source)
    return (None, error) if error else _finish(source, messages, columns.tools or "tools")


def _identity(source: Record) -> tuple[Record, None]:
    return source, None


def detect_layout(record: Record, columns: ColumnMap, where: str) -> tuple[str, ColumnMap]:
    """The layout of a record from its keys (module docstring).

    Args:
        record: the input's first record.
        columns: a `messages` field named here is looked for first.
        where: the input, for the error.

    Returns:
        (one of LAYOUTS, `columns` naming the turns field when it is not the layout's own).

    Raises:
        SftpackError: no layout fits; names the keys found and the layouts accepted (exit 2).
    """
    for key in filter(None, (columns.messages, "messages", "conversations")):
        if isinstance(record.get(key), list):
            first = next((t for t in record[key] if isinstance(t, dict)), {})
            layout = "sharegpt" if "from" in first or (key == "conversations" and "role" not in first) else "messages"
            if key != turns_layout(layout, columns).messages:  # sharegpt turns under `messages`, and the reverse
                columns = dataclasses.replace(columns, messages=key)
            return layout, columns
    if "instruction" in record and "output" in record:
        return "alpaca", columns
    if "prompt" in record and "completion" in record:
        return "prompt_completion", columns
    raise SftpackError(
        f"{where}: cannot tell the layout from the first record's keys ({', '.join(sorted(record)) or 'none'}); "
        "accepted: messages (a `messages` list of {role, content}), sharegpt (a `conversations` list of "
        "{from, value}), alpaca (`instruction` and `output`), prompt_completion (`prompt` and `completion`, "
        "strings or lists of messages); name it with --format, and point to other "
        "columns with --messages-field, --role-key, --content-key, --role-map")


def converter(layout: str, columns: ColumnMap) -> Callable[[Record], tuple[Record | None, RowError | None]]:
    """The function turning one record of `layout` into messages form (the identity for plain messages)."""
    if layout == "alpaca":
        return partial(convert_alpaca, columns=columns)
    if layout == "prompt_completion":
        return partial(convert_prompt_completion, columns=columns)
    if layout == "messages" and columns.is_default():
        return _identity
    return partial(convert_turns, layout=turns_layout(layout, columns))
