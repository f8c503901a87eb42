"""Input files as byte ranges, the units of work on a Ray cluster (pack and validate on Ray).

A plain JSONL file is cut into ranges of about `range_bytes`, anywhere (a line belongs to the range
it starts in); any other file is one range. A task counts each range's newlines, so the driver
knows every range's first line number, and a range's rows then come out as the readers give them
for that part of the file, numbered as the local run numbers them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from sftpack.distributed.cluster import check_input, run_dataset
from sftpack.errors import SftpackError

RANGE_BYTES = 8 << 20
"""Largest byte range one encode call reads: big enough that per-call overhead is small, small
enough that a retried range costs little and every CPU gets several."""
MIN_RANGE_BYTES = 64 << 10


def byte_ranges(sources: list[Any], range_bytes: int) -> list[dict[str, Any]]:
    """The units of work: every plain JSONL file cut into ranges of at most `range_bytes` (a line belongs
    to the range it starts in); any other file (compressed JSONL, Parquet, Arrow) whole.

    Raises:
        SftpackError: an input that is a dataset name (it has no files the nodes could read).
    """
    from sftpack.packing.encode import example_stem
    from sftpack.io.readers import file_container

    ranges = []
    for s, source in enumerate(sources):
        if not source.files:
            raise SftpackError(f"{source.spec}: --ray reads input files on the nodes, and a dataset name has none; "
                               "write it with `sftpack convert-data` first, or pack without --ray")
        for path in source.files:
            label = source._label(path)
            size = os.path.getsize(path)
            common = {"source": s, "path": str(Path(path).resolve()), "size": size, "label": label,
                      "stem": example_stem(source, label), "first_line": 1}
            if file_container(path) != "jsonl":
                ranges.append({**common, "range": len(ranges), "whole": True, "start": 0, "end": size})
                continue
            for start in range(0, size, range_bytes):
                ranges.append({**common, "range": len(ranges), "whole": False, "start": start,
                               "end": min(start + range_bytes, size)})
    return ranges


def numbered_ranges(sources: list[Any], cpus: int) -> list[dict[str, Any]]:
    """`byte_ranges` sized for a cluster of `cpus` CPUs (about four ranges a CPU, RANGE_BYTES at
    most), each with its `first_line`: 1 + the newlines before it in its file, counted on the cluster."""
    import ray.data

    total = sum(os.path.getsize(f) for source in sources for f in source.files)
    ranges = byte_ranges(sources, int(min(RANGE_BYTES, max(MIN_RANGE_BYTES, total // (4 * cpus) + 1))))
    if not ranges:
        return ranges
    counted = ray.data.from_items(ranges, override_num_blocks=len(ranges)).map(count_newlines)
    newlines = {row["range"]: row["newlines"] for row in run_dataset(counted.iter_rows())}
    before: dict[str, int] = {}
    for spec in ranges:
        spec["first_line"] = before.get(spec["path"], 0) + 1
        before[spec["path"]] = before.get(spec["path"], 0) + newlines[spec["range"]]
    return ranges

def count_newlines(spec: dict[str, Any]) -> dict[str, Any]:
    check_input(spec["path"], spec["size"])
    if spec["whole"]:
        return {"range": spec["range"], "newlines": 0}
    count, left = 0, spec["end"] - spec["start"]
    with open(spec["path"], "rb") as handle:
        handle.seek(spec["start"])
        while left > 0:
            block = handle.read(min(left, 4 << 20))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return {"range": spec["range"], "newlines": count}


def range_lines(path: str, start: int, end: int, first_line: int,
                blanks: bool = False) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line with its newline) for the lines starting in [start, end).

    `first_line` is the number the line at `start` has if a line starts there; otherwise the
    partial line is skipped and the next one gets first_line + 1. Lines are split as the readers
    split JSONL (binary readline: on b"\\n"); blank lines are skipped unless `blanks`.
    """
    with open(path, "rb") as handle:
        position, number = start, first_line
        if start > 0:
            handle.seek(start - 1)
            if handle.read(1) != b"\n":  # mid-line: that line belongs to the range before
                position += len(handle.readline())
                number += 1
        while position < end:
            raw = handle.readline()
            if not raw:
                break
            if blanks or raw.strip():
                yield number, raw
            position += len(raw)
            number += 1


def range_rows(spec: dict[str, Any], layout: str, columns: Any, blanks: bool = False) -> Iterator[Any]:
    """One range's readers.Row objects, as `InputSource.rows(blanks)` gives them for that part of the file."""
    from sftpack.checks.messages import parse_line
    from sftpack.io.readers import Row, _file_items, converter

    convert = converter(layout, columns)
    if spec["whole"]:
        items = _file_items(Path(spec["path"]))
    else:
        items = ((n, raw, *(_parsed(parse_line(raw)) if raw.strip() else (None, None))) for n, raw in
                 range_lines(spec["path"], spec["start"], spec["end"], spec["first_line"], blanks))
    for number, raw, record, error in items:
        if record is None and error is None:
            if blanks:
                yield Row(spec["label"], number, None, None, raw)
            continue
        original = record
        if error is None:
            record, error = convert(record)
        yield Row(spec["label"], number, record, error, raw, original)


def _parsed(found: tuple[Any, list]) -> tuple[Any, Any]:
    record, errors = found
    return record, errors[0] if errors else None
