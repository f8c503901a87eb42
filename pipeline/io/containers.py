"""Where an input's rows come from: the containers it may be stored in, streamed row by row.

One input (`readers.open_input(spec)`) is one of these containers, told apart by the path:

    x.jsonl (any other file name too)      line by line, binary (as validate always read it)
    x.jsonl.gz, x.jsonl.zst                the same through gzip / zstandard
    x.parquet, a folder or a glob          pyarrow.parquet.ParquetFile.iter_batches per file, files in
                                           name order (a folder or glob may mix the file kinds above)
    a datasets.save_to_disk folder         (state.json or dataset_info.json inside; a DatasetDict folder
                                           picks --split) its Arrow files, batch by batch
    a dataset name (no such path)          datasets.load_dataset(name, split=...) offline from the local
                                           cache, streaming=True when the cache allows it

Nothing is read whole: memory holds one record batch (Arrow) or one line (JSONL).
Every container yields the same items, (number, raw line or None, record or None, RowError or
None); the layout (pipeline/io/layouts.py) then turns each record into messages form.
"""

from __future__ import annotations

import glob as globbing
import gzip
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from sftpack.errors import SftpackError
from sftpack.store.fingerprint import file_identity
from sftpack.io.lines import parse_line
from sftpack.records import RowError

JSONL_SUFFIXES = {".gz": "jsonl.gz", ".zst": "jsonl.zst", ".zstd": "jsonl.zst"}
DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd")
SAVE_TO_DISK_FILES = ("state.json", "dataset_info.json")
_DATASET_NAME = r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?"

Item = tuple[int, bytes | None, dict[str, Any] | None, RowError | None]
"""One row as a container gives it: (1-based number, the JSONL line's bytes or None for Arrow,
the record or None (blank line or error), the parse error or None)."""


# ---------------------------------------------------------------- reading files

def drop_nulls(value: Any) -> Any:
    """`value` without null values at any depth (an Arrow record as it was written)."""
    # Arrow struct columns hold every key any row had; a null stands for "this row had no such key".
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


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


def line_items(lines: Iterable[tuple[int, bytes]]) -> Iterator[Item]:
    """Numbered JSONL lines as items: blank ones as (number, raw, None, None), the rest parsed."""
    for number, raw in lines:
        if not raw.strip():
            yield number, raw, None, None
            continue
        record, errors = parse_line(raw)
        yield number, raw, record, errors[0] if errors else None


def _jsonl_items(path: Path, container: str) -> Iterator[Item]:
    with _open_jsonl(path, container) as handle:
        yield from line_items(enumerate(handle, start=1))


def _arrow_batches(path: Path, container: str, batch_size: int) -> Iterator[Any]:
    import pyarrow as pa

    if container == "parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size)
        return
    # Read, not memory-mapped: a mapping would keep every page read so far as this process's
    # memory, and memory is to stay bounded by the batch.
    with pa.OSFile(str(path)) as source:  # save_to_disk writes the Arrow IPC stream format
        yield from pa.ipc.open_stream(source)


def file_items(path: Path, batch_size: int = 1024) -> Iterator[Item]:
    """Every row of one file in order: JSONL line by line, Arrow `batch_size` rows at a time."""
    container = file_container(path)
    if container.startswith("jsonl"):
        yield from _jsonl_items(path, container)
        return
    number = 0
    for batch in _arrow_batches(path, container, batch_size):
        for record in batch.to_pylist():
            number += 1
            yield number, None, drop_nulls(record), None


# ---------------------------------------------------------------- naming and identity

def output_stem(name: str) -> str:
    """`x` for x.jsonl[.gz|.zst], x.parquet or x.arrow: the base name outputs are named after."""
    for suffix in (*JSONL_SUFFIXES, ".parquet", ".arrow"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".jsonl") if name.endswith(".jsonl") else Path(name).stem or name


def container_identity(path: Path) -> dict[str, Any]:
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


# ---------------------------------------------------------------- locating an input

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


def looks_like_dataset_name(spec: str) -> bool:
    """True for `name` or `owner/name` without a data file suffix (a spec that is no path)."""
    return re.fullmatch(_DATASET_NAME, spec) is not None and not spec.endswith((*DATA_SUFFIXES, ".json", ".gz",
                                                                                ".zst", ".arrow"))


def load_dataset(name: str, split: str) -> Any:
    """The cached dataset `name`, streamed when the cache allows it.

    Raises:
        SftpackError: not in the local cache (exit 2).
    """
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


def locate_path(spec: str, split: str | None) -> tuple[str, list[Path], Path]:
    """The container, files and root of an existing path (a file, a Parquet folder, a save_to_disk folder).

    Raises:
        SftpackError: a folder without data, an unreadable file, a split not there (exit 2).
    """
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



def locate_glob(spec: str) -> tuple[list[Path], Path]:
    """The files a glob matches, in name order, and the folder they are named relative to.

    Raises:
        SftpackError: no file matches (exit 2).
    """
    files = sorted(Path(p) for p in globbing.glob(spec, recursive=True) if Path(p).is_file())
    if not files:
        raise SftpackError(f"{spec}: no files match this pattern")
    return files, Path(os.path.commonpath([str(f.parent) for f in files]))
