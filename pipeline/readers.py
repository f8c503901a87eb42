"""Read conversations from any container and layout into messages form, in streamed batches.

One input (`open_input(spec)`) is one of these containers, told apart by the path:

    x.jsonl (any other file name too)      line by line, binary (as validate always read it)
    x.jsonl.gz, x.jsonl.zst                the same through gzip / zstandard
    x.parquet, a folder or a glob          pyarrow.parquet.ParquetFile.iter_batches per file, files in
                                           name order (a folder or glob may mix the file kinds above)
    a datasets.save_to_disk folder         (state.json or dataset_info.json inside; a DatasetDict folder
                                           picks --split) its Arrow files memory-mapped, batch by batch
    a dataset name (no such path)          datasets.load_dataset(name, split=...) offline from the local
                                           cache, streaming=True when the cache allows it

Nothing is read whole: memory holds one record batch (Arrow) or one line (JSONL).

Each input has one layout, taken from its first record's keys unless `format` names it:

    messages   {"messages": [{role, content, tool_calls?, ...}], "tools"?, "id"?, "source"?}
               (a `messages` list whose turns have `from` reads as sharegpt)
    sharegpt   {"conversations": [{from, value}], "system"?, "tools"?}
    alpaca     {"instruction", "input"?, "output", "system"?, "history"?, "tools"?}

A first record with none of these keys is an error naming the keys found and the layouts accepted.

Conversion rules (the record in messages form is what validate checks and what pack templates):
  - messages: the record as it is. From a JSONL container that is the parsed line, byte for byte
    what validate has always kept. From an Arrow container (Parquet, save_to_disk, a dataset) null
    values are dropped at every depth first: Arrow gives every row every key any row of the column
    has, null where the row had none (so `tool_calls: null` on plain turns, or another call's
    argument names in `arguments`); dropping them gives back the record as it was written.
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

A record that cannot be converted gives a RowError naming the field (`/conversations/3/from`) and a
message naming the input and row is built from `Row.where()`: `data.parquet row 12`. JSONL lines
that are not JSON objects give the same RowError validate has always given (pipeline.messages).
"""

from __future__ import annotations

import dataclasses
import glob as globbing
import gzip
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from pipeline.errors import SftpackError
from pipeline.fingerprint import file_identity
from pipeline.messages import ROLES, RowError, parse_line

Record = dict[str, Any]
LAYOUTS = ("messages", "sharegpt", "alpaca")
FORMATS = ("auto", *LAYOUTS)
TARGETS = (*ROLES, "function_call")
"""What a role name in the data may map to: a messages role, or function_call (an assistant tool call)."""
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "function_call", "observation": "tool", "tool": "tool"}
PROVENANCE_KEYS = ("input", "row")
"""Keys that converted lines carry: the input file the record came from and its row there."""
DETECT_LINES = 1000  # a JSONL input's layout comes from the first JSON object among this many lines
_CARRIED_TURN_KEYS = ("tool_calls", "tool_call_id", "name")


# ---------------------------------------------------------------- options

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


@dataclass(frozen=True)
class ReadOptions:
    """How inputs are read: what validate, convert-data, pack and report pass to `open_input`."""

    format: str = "auto"
    """Layout: auto (from the first record's keys) | messages | sharegpt | alpaca."""
    split: str | None = None
    """Split of a dataset name or a DatasetDict save_to_disk folder (None: train)."""
    columns: ColumnMap = field(default_factory=ColumnMap)
    """Column map for data written in another shape."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise SftpackError(f"--format (data.format) {self.format!r}: expected one of {', '.join(FORMATS)}")

    def open(self, spec: str | os.PathLike) -> "InputSource":
        """`open_input(spec)` with these options."""
        return open_input(spec, self.format, self.split, self.columns)


class Row(NamedTuple):
    """One record of an input, in messages form or with the reason it could not be converted."""

    file: str
    """The file it came from, relative to the input (the dataset name and split for a dataset)."""
    number: int
    """1-based: the line number for JSONL, the row within `file` otherwise."""
    record: Record | None
    """The record in messages form; None when `error` is set or the line is blank."""
    error: RowError | None
    """Why the record could not be read or converted (JSON pointer path, rule, message)."""
    raw: bytes | None
    """The line's bytes as read (JSONL containers only, decompressed)."""
    original: Record | None = None
    """The record as read, before conversion (for rejects that quote it); None when not parsed."""

    @property
    def blank(self) -> bool:
        return self.record is None and self.error is None

    def where(self) -> str:
        """`x.jsonl:3` for a JSONL line, `data.parquet row 12` otherwise."""
        return f"{self.file}:{self.number}" if self.raw is not None else f"{self.file} row {self.number}"


# ---------------------------------------------------------------- conversion

def _error(path: str, rule: str, message: str) -> tuple[None, RowError]:
    return None, RowError(path, rule, message)


def _pointer(*parts: Any) -> str:
    return "".join(f"/{part}" for part in parts)


def _drop_nulls(value: Any) -> Any:
    # Arrow struct columns hold every key any row had; a null stands for "this row had no such key".
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


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
            return _error(_pointer(column), "convert_tools", f"{column} is not JSON ({err.msg} at column "
                                                             f"{err.colno}); expected a JSON list of functions")
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
            return _error(path, "convert_tool_call", f"{where} is not JSON ({err.msg} at column {err.colno}); "
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
    raise SftpackError(
        f"{where}: cannot tell the layout from the first record's keys ({', '.join(sorted(record)) or 'none'}); "
        "accepted: messages (a `messages` list of {role, content}), sharegpt (a `conversations` list of "
        "{from, value}), alpaca (`instruction` and `output`); name it with --format, and point to other "
        "columns with --messages-field, --role-key, --content-key, --role-map")


def converter(layout: str, columns: ColumnMap) -> Callable[[Record], tuple[Record | None, RowError | None]]:
    """The function turning one record of `layout` into messages form (the identity for plain messages)."""
    if layout == "alpaca":
        return partial(convert_alpaca, columns=columns)
    if layout == "messages" and columns.is_default():
        return _identity
    return partial(convert_turns, layout=turns_layout(layout, columns))


# ---------------------------------------------------------------- containers

JSONL_SUFFIXES = {".gz": "jsonl.gz", ".zst": "jsonl.zst", ".zstd": "jsonl.zst"}
DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd")
SAVE_TO_DISK_FILES = ("state.json", "dataset_info.json")


def file_container(path: Path) -> str:
    """jsonl, jsonl.gz, jsonl.zst, parquet or arrow (a save_to_disk shard), from the file name."""
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix == ".arrow":
        return "arrow"
    return JSONL_SUFFIXES.get(path.suffix, "jsonl")  # any other name reads as JSONL, as validate always did


def _open_jsonl(path: Path, container: str) -> io.BufferedIOBase:
    if container == "jsonl.gz":
        return gzip.open(path, "rb")
    if container == "jsonl.zst":
        import zstandard  # only zst inputs need it

        handle = open(path, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader)  # line iteration over the decompressed stream
    return open(path, "rb")


Item = tuple[int, "bytes | None", "Record | None", "RowError | None"]


def _jsonl_items(path: Path, container: str) -> Iterator[Item]:
    with _open_jsonl(path, container) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                yield number, raw, None, None
                continue
            record, errors = parse_line(raw)
            yield number, raw, record, errors[0] if errors else None


def _arrow_batches(path: Path, container: str, batch_size: int) -> Iterator[Any]:
    import pyarrow as pa

    if container == "parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(path, memory_map=True).iter_batches(batch_size=batch_size)
        return
    with pa.memory_map(str(path)) as source:  # save_to_disk writes the Arrow IPC stream format
        yield from pa.ipc.open_stream(source)


def _file_items(path: Path, batch_size: int = 1024) -> Iterator[Item]:
    container = file_container(path)
    if container.startswith("jsonl"):
        yield from _jsonl_items(path, container)
        return
    number = 0
    for batch in _arrow_batches(path, container, batch_size):
        for record in batch.to_pylist():
            number += 1
            yield number, None, _drop_nulls(record), None


def _save_to_disk_files(folder: Path, split: str | None, spec: str) -> list[Path]:
    if (folder / "dataset_dict.json").is_file():  # a DatasetDict: one save_to_disk folder per split
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        chosen = split or "train"
        if chosen not in splits:
            raise SftpackError(f"{spec}: no split {chosen!r} in this DatasetDict folder (splits: "
                               f"{', '.join(splits)}); choose one with --split")
        folder = folder / chosen
    state = folder / "state.json"
    if state.is_file():
        names = [entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
        return [folder / name for name in names]  # state.json keeps the shards' order
    return sorted(folder.glob("*.arrow"))


def _jsonl_stem(name: str) -> str:
    for suffix in (*JSONL_SUFFIXES, ".parquet", ".arrow"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".jsonl") if name.endswith(".jsonl") else Path(name).stem or name


def _file_identity(path: Path) -> dict[str, Any]:
    """sha256 and size of the file's bytes; its lines (JSONL, decompressed) or rows (Arrow)."""
    container = file_container(path)
    if container == "jsonl":  # one pass for both (the common case, and what pack has always recorded)
        found = file_identity(path)
        return {"sha256": found["sha256"], "bytes": found["bytes"], "lines": found["lines"]}
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    if container == "parquet":
        import pyarrow.parquet as pq

        count = {"rows": pq.ParquetFile(path).metadata.num_rows}
    elif container == "arrow":
        count = {"rows": sum(batch.num_rows for batch in _arrow_batches(path, container, 0))}
    else:
        with _open_jsonl(path, container) as handle:
            count = {"lines": _count_lines(handle)}
    return {"sha256": digest.hexdigest(), "bytes": size} | count


def _count_lines(handle: io.BufferedIOBase) -> int:
    """Lines as fingerprint.file_identity counts them: a last line without newline counts too."""
    lines, last = 0, b"\n"
    while block := handle.read(1 << 20):
        lines += block.count(b"\n")
        last = block[-1:]
    return lines + (last != b"\n")


@dataclass
class InputSource:
    """One input, opened: where its records are, their layout, and how to read them in messages form."""

    spec: str
    """The input as given (path, folder, glob or dataset name); `name` for messages."""
    container: str
    """jsonl | jsonl.gz | jsonl.zst | parquet | arrow | folder | glob | save_to_disk | dataset."""
    files: list[Path]
    """The files read, in order (empty for a dataset name)."""
    root: Path | None
    """Files are named relative to it in rows and messages."""
    columns: ColumnMap
    """The column map applied (ColumnMap() for none)."""
    layout: str = "messages"
    """One of LAYOUTS (resolved by open_input)."""
    dataset: Any = None
    """The datasets (Iterable)Dataset of a dataset name."""
    split: str | None = None
    """The split read, for a dataset name or a DatasetDict folder."""

    @property
    def name(self) -> str:
        return self.spec

    @property
    def stem(self) -> str:
        """Base name for outputs: `x` for x.jsonl[.gz|.zst] or x.parquet, the folder's name, `name-split`."""
        if self.container == "dataset":
            return f"{self.spec.rsplit('/', 1)[-1]}-{self.split}"
        if self.container == "glob":
            return Path(self.root or ".").resolve().name
        if self.container in ("folder", "save_to_disk"):
            return Path(self.spec).resolve().name
        return _jsonl_stem(self.files[0].name)

    @property
    def verbatim(self) -> bool:
        """True when records are JSONL lines in messages layout, unconverted: validate keeps their bytes."""
        return (self.layout == "messages" and self.columns.is_default()
                and all(file_container(f).startswith("jsonl") for f in self.files) and self.dataset is None)

    def _label(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if self.root is not None else path.name

    def _items(self) -> Iterator[tuple[str, Item]]:
        if self.dataset is not None:
            label = f"{self.spec}[{self.split}]"
            for number, record in enumerate(self.dataset, start=1):
                yield label, (number, None, _drop_nulls(dict(record)), None)
            return
        for path in self.files:
            label = self._label(path)
            for item in _file_items(path):
                yield label, item

    def rows(self, blanks: bool = False) -> Iterator[Row]:
        """Every record in order, converted to messages form.

        Args:
            blanks: also yield blank JSONL lines (as rows with neither record nor error).

        Returns:
            An iterator of Row.
        """
        convert = converter(self.layout, self.columns)
        for label, (number, raw, record, error) in self._items():
            if record is None and error is None:
                if blanks:
                    yield Row(label, number, None, None, raw)
                continue
            original = record
            if error is None:
                record, error = convert(record)
            yield Row(label, number, record, error, raw, original)

    def batches(self, batch_size: int = 1000, blanks: bool = False) -> Iterator[list[Row]]:
        """`rows()` in lists of `batch_size` (the last one shorter).

        Args:
            batch_size: rows per list, at least 1.
            blanks: as in `rows`.

        Returns:
            An iterator of lists of Row; memory holds one list and one record batch of the container.
        """
        batch: list[Row] = []
        for row in self.rows(blanks):
            batch.append(row)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def identity(self) -> dict[str, Any]:
        """What the input is, for manifests and fingerprints (one streaming pass, nothing kept).

        Returns:
            {"path", "sha256", "bytes", "lines" (JSONL) or "rows", "container", "layout", "columns",
            "split" (when one was read)}.
            sha256 is over the file's bytes as stored (a plain JSONL file's equals
            fingerprint.file_identity's); for several files, over "relative name NUL sha256 LF" per file;
            for a dataset name, over each record's canonical JSON and a newline. `columns` is None
            without a column map.
        """
        reading = {"container": self.container, "layout": self.layout,
                   "columns": None if self.columns.is_default() else asdict(self.columns)}
        if self.split is not None:
            reading["split"] = self.split
        if self.dataset is not None:
            digest, size, rows = hashlib.sha256(), 0, 0
            for _, (_, _, record, _) in self._items():
                line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n"
                digest.update(line)
                size, rows = size + len(line), rows + 1
            return {"path": self.spec, "sha256": digest.hexdigest(), "bytes": size, "rows": rows} | reading
        per_file = [(self._label(path), _file_identity(path)) for path in self.files]
        if len(per_file) == 1:
            sha = per_file[0][1]["sha256"]
        else:
            sha = hashlib.sha256("".join(f"{label}\0{i['sha256']}\n" for label, i in per_file).encode()).hexdigest()
        totals = {"sha256": sha, "bytes": sum(i["bytes"] for _, i in per_file)}
        for key in ("lines", "rows"):
            if any(key in i for _, i in per_file):
                totals[key] = sum(i.get(key, 0) for _, i in per_file)
        return {"path": self.spec} | totals | reading

    def _detect(self) -> tuple[str, ColumnMap]:
        for count, (_, (_, _, record, _)) in enumerate(self._items()):
            if record is not None:
                return detect_layout(record, self.columns, self.spec)
            if count >= DETECT_LINES:
                break
        # Nothing readable: read as messages, so every line is rejected as validate always did.
        return "messages", self.columns


# ---------------------------------------------------------------- opening

_DATASET_NAME = r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?"


def _looks_like_dataset_name(spec: str) -> bool:
    import re

    return re.fullmatch(_DATASET_NAME, spec) is not None and not spec.endswith((*DATA_SUFFIXES, ".json", ".gz",
                                                                                ".zst", ".arrow"))


def _load_dataset(name: str, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except Exception:  # noqa: BLE001 - some caches only load whole (memory-mapped), try that next
        pass
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; each means "not loadable here"
        raise SftpackError(f"{name}: no such file or folder, and datasets.load_dataset({name!r}, split={split!r}) "
                           f"found nothing in the local cache ({type(err).__name__}: {str(err)[:200]}); give a "
                           "path, or load the dataset once with network access") from None


def _locate_path(spec: str, split: str | None) -> tuple[str, list[Path], Path]:
    path = Path(spec)
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_dict.json", *SAVE_TO_DISK_FILES)):
            files = _save_to_disk_files(path, split, spec)
            return "save_to_disk", files, files[0].parent if files else path
        files = sorted(path.glob("*.parquet"))  # Parquet only: a folder of JSONL may hold rejects beside data
        if not files:
            raise SftpackError(f"{spec}: is a folder with neither *.parquet files nor a datasets.save_to_disk "
                               "dataset (state.json); give the JSONL files inside it, or a glob")
        return "folder", files, path
    if not os.access(path, os.R_OK):
        raise SftpackError(f"{spec}: cannot read the file (permission denied)")
    return file_container(path), [path], path.parent


def open_input(spec: str | os.PathLike, format: str = "auto", split: str | None = None,
               columns: ColumnMap | None = None) -> InputSource:
    """Open one input of any container and layout (module docstring) for streaming in messages form.

    Args:
        spec: a file, a folder (Parquet files or a save_to_disk dataset), a glob, or a dataset name.
        format: auto (the layout from the first record's keys) | messages | sharegpt | alpaca.
        split: split of a dataset name or DatasetDict folder (None: train); ignored for files.
        columns: a column map for data in another shape.

    Returns:
        The InputSource (layout resolved; nothing but the first records read).

    Raises:
        SftpackError: (exit 2) no such input, an unreadable one, a folder without data, a glob
            matching nothing, a dataset not in the cache, a split not there, a layout not detected,
            an unknown format.
    """
    spec, columns = str(spec), columns or ColumnMap()
    ReadOptions(format, split, columns)  # checks the format
    if Path(spec).exists():
        container, files, root = _locate_path(spec, split)
        split = (split or "train") if (Path(spec) / "dataset_dict.json").is_file() else None  # files have none
        source = InputSource(spec, container, files, root, columns, split=split)
    elif any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in globbing.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise SftpackError(f"{spec}: no files match this pattern")
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        source = InputSource(spec, "glob", files, root, columns)
    elif _looks_like_dataset_name(spec):
        split = split or "train"
        source = InputSource(spec, "dataset", [], None, columns, dataset=_load_dataset(spec, split), split=split)
    else:
        raise SftpackError(f"{spec}: input file not found")
    if format == "auto":
        source.layout, source.columns = source._detect()
    else:
        source.layout = format
    return source


def provenance_line(row: Row) -> tuple[bytes | None, RowError | None]:
    """A converted row as one messages JSONL line carrying where it came from.

    The record's keys come first, then `input` (the file, relative to the input) and `row`
    (its line or row number there); the messages schema allows extra top-level keys.

    Args:
        row: a row with a record.

    Returns:
        (the line with its newline, None), or (None, error with rule reserved_key) when the record
        already has an `input` or `row` key, which the line would overwrite.
    """
    clash = [key for key in PROVENANCE_KEYS if key in row.record]
    if clash:
        return None, RowError(f"/{clash[0]}", "reserved_key", f"the record has a {clash[0]!r} key, which sftpack "
                              "uses to record where a converted row came from; rename that column")
    line = row.record | {"input": row.file, "row": row.number}
    # default=str: an Arrow column of dates or decimals carried as metadata is written as text
    return (json.dumps(line, ensure_ascii=False, default=str) + "\n").encode("utf-8"), None
