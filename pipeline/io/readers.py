"""Read conversations from any container and layout into messages form, in streamed batches.

    spec ──containers──> items ──layouts──> Row (a record in messages form, or a RowError)
          JSONL/.gz/.zst, Parquet       messages, sharegpt, alpaca, prompt_completion,
          files/folders/globs,          a column map (`ColumnMap`)
          save_to_disk, dataset names

`open_input(spec)` tells the container from the path (pipeline/io/containers.py lists them)
and the layout from the first record's keys unless `format` names it (pipeline/io/layouts.py:
the layouts and their conversion rules). Nothing is read whole: memory holds one record batch
(Arrow) or one line (JSONL).

A record that cannot be converted gives a RowError naming the field (`/conversations/3/from`) and a
message naming the input and row is built from `Row.where()`: `data.parquet:12`. JSONL lines
that are not JSON objects give the same RowError validate has always given (sftpack.checks.messages).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from sftpack.errors import SftpackError
from sftpack.io.containers import (DATA_SUFFIXES, Item, container_identity, drop_nulls, file_container,
                                       file_items, load_dataset, locate_glob, locate_path, looks_like_dataset_name,
                                       output_stem)
from sftpack.io.layouts import FORMATS, ColumnMap, Record, converter, detect_layout
from sftpack.io.ranges import InputRange, range_items
from sftpack.records import RowError

# The public entry. ColumnMap, converter (layouts), file_container and DATA_SUFFIXES
# (containers) are listed because callers import them from here: stages, tests, pipeline/reporting/stage.py.
__all__ = ["DATA_SUFFIXES", "ColumnMap", "InputSource", "ReadOptions", "Row", "converter", "file_container",
           "open_input", "provenance_line", "reference"]

PROVENANCE_KEYS = ("input", "row")
"""Keys that converted lines carry: the input file the record came from and its row there."""
DETECT_LINES = 1000  # a JSONL input's layout comes from the first JSON object among this many lines


# ---------------------------------------------------------------- options and rows

@dataclass(frozen=True)
class ReadOptions:
    """How inputs are read: what validate, convert-data, pack and report pass to `open_input`."""

    format: str = "auto"
    """Layout: auto (from the first record's keys) | messages | sharegpt | alpaca | prompt_completion."""
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

    def open_each(self, specs: list[str | os.PathLike]) -> tuple[list["InputSource"], list[str]]:
        """Open every input: (the sources opened, one message per input that could not be), so a
        stage can report every problem at once."""
        sources, problems = [], []
        for spec in specs:
            try:
                sources.append(self.open(spec))
            except SftpackError as err:
                problems.append(str(err))
        return sources, problems


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
        """`x.jsonl:3`, `data.parquet:12`: the file and its line or row (`reference`)."""
        return f"{self.file}:{self.number}"


# ---------------------------------------------------------------- an opened input

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
    """One of layouts.LAYOUTS (resolved by open_input)."""
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
        return output_stem(self.files[0].name)

    @property
    def progress_in_bytes(self) -> bool:
        """True for a plain JSONL file, whose bytes read are the file's: progress counts them (a .gz
        or another container counts rows)."""
        return self.container == "jsonl"

    @property
    def verbatim(self) -> bool:
        """True when records are JSONL lines in messages layout, unconverted: validate keeps their bytes."""
        return (self.layout == "messages" and self.columns.is_default()
                and all(file_container(f).startswith("jsonl") for f in self.files) and self.dataset is None)

    def label(self, path: Path) -> str:
        """How rows name one of its files: relative to the input's folder or glob root, else its name."""
        return str(path.relative_to(self.root)) if self.root is not None else path.name

    def example_stem(self, label: str) -> str:
        """What names an example without an id, before `:line`: `x` for x.jsonl (x:12, as pack has
        always named them); a file of a folder or glob is named under it (data/part-0:12), so ids
        stay unique across its files."""
        if len(self.files) <= 1:
            return self.stem
        return f"{self.stem}/{label.split('.', 1)[0]}"

    def _dataset_items(self) -> Iterator[Item]:
        for number, record in enumerate(self.dataset, start=1):
            yield number, None, drop_nulls(dict(record)), None

    def _items(self) -> Iterator[tuple[str, Item]]:
        if self.dataset is not None:
            label = f"{self.spec}[{self.split}]"
            for item in self._dataset_items():
                yield label, item
            return
        for path in self.files:
            label = self.label(path)
            for item in file_items(path):
                yield label, item

    def rows(self, blanks: bool = False) -> Iterator[Row]:
        """Every record in order, converted to messages form.

        Args:
            blanks: also yield blank JSONL lines (as rows with neither record nor error).

        Returns:
            An iterator of Row.
        """
        return _rows(self._items(), converter(self.layout, self.columns), blanks)

    def range_rows(self, task: InputRange, blanks: bool = False) -> Iterator[Row]:
        """The rows of one of this input's ranges (io.ranges), as `rows` gives them for that part."""
        items = self._dataset_items() if task.path == "" else range_items(task)
        return _rows(((task.label, item) for item in items), converter(self.layout, self.columns), blanks)

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
        per_file = [(self.label(path), container_identity(path)) for path in self.files]
        if len(per_file) == 1:
            sha = per_file[0][1]["sha256"]
        else:
            sha = hashlib.sha256("".join(f"{label}\0{i['sha256']}\n" for label, i in per_file).encode()).hexdigest()
        totals = {"sha256": sha, "bytes": sum(i["bytes"] for _, i in per_file)}
        for key in ("lines", "rows"):
            if any(key in i for _, i in per_file):
                totals[key] = sum(i.get(key, 0) for _, i in per_file)
        return {"path": self.spec} | totals | reading

    def has_records(self) -> bool:
        """Whether any row is more than a blank line (reads up to the first one that is)."""
        return any(record is not None or error is not None for _, (_, _, record, error) in self._items())

    def _detect(self) -> tuple[str, ColumnMap]:
        for count, (_, (_, _, record, _)) in enumerate(self._items()):
            if record is not None:
                return detect_layout(record, self.columns, self.spec)
            if count >= DETECT_LINES:
                break
        # Nothing readable: read as messages, so every line is rejected as validate always did.
        return "messages", self.columns


def _rows(items: Iterator[tuple[str, Item]], convert: Any, blanks: bool) -> Iterator[Row]:
    for label, (number, raw, record, error) in items:
        if record is None and error is None:
            if blanks:
                yield Row(label, number, None, None, raw)
            continue
        original = record
        if error is None:
            record, error = convert(record)
        yield Row(label, number, record, error, raw, original)


# ---------------------------------------------------------------- opening

def open_input(spec: str | os.PathLike, format: str = "auto", split: str | None = None,
               columns: ColumnMap | None = None) -> InputSource:
    """Open one input of any container and layout (module docstring) for streaming in messages form.

    Args:
        spec: a file, a folder (Parquet files or a save_to_disk dataset), a glob, or a dataset name.
        format: auto (the layout from the first record's keys) | messages | sharegpt | alpaca | prompt_completion.
        split: split of a dataset name or DatasetDict folder (None: train); ignored for files.
        columns: a column map for data in another shape.

    Returns:
        The InputSource (layout resolved; nothing but the first records read).

    Raises:
        SftpackError: (exit 2) no such input, an unreadable one, one without records (empty, or
            blank lines only), a folder without data, a glob matching nothing, a dataset not in
            the cache, a split not there, a layout not detected, an unknown format.
    """
    spec, columns = str(spec), columns or ColumnMap()
    ReadOptions(format, split, columns)  # checks the format
    if Path(spec).exists():
        container, files, root = locate_path(spec, split)
        split = (split or "train") if (Path(spec) / "dataset_dict.json").is_file() else None  # files have none
        source = InputSource(spec, container, files, root, columns, split=split)
    elif any(ch in spec for ch in "*?["):
        files, root = locate_glob(spec)
        source = InputSource(spec, "glob", files, root, columns)
    elif looks_like_dataset_name(spec):
        split = split or "train"
        source = InputSource(spec, "dataset", [], None, columns, dataset=load_dataset(spec, split), split=split)
    else:
        raise SftpackError(f"{spec}: input file not found")
    if not source.has_records():  # one policy in every stage: an input with nothing to read is an error
        raise SftpackError(f"{spec}: no records (the input is empty or holds only blank lines); give an input "
                           "with at least one conversation, or leave this one out")
    if format == "auto":
        source.layout, source.columns = source._detect()
    else:
        source.layout = format
    return source


def reference(spec: str, file: str, number: int) -> str:
    """Where a row is, written one way everywhere: `x.parquet:505` for a row of the input itself,
    `part-1.parquet:505 (in data/)` for one of a folder's or glob's files.

    Args:
        spec: the input as given.
        file: the row's file, relative to the input (Row.file).
        number: its line or row, from 1.
    """
    return f"{spec}:{number}" if Path(spec).name == file else f"{file}:{number} (in {spec})"


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
