"""Inputs as ranges, the units of work of validate and pack (locally and on a Ray cluster alike).

A plain JSONL file is cut into byte ranges of about `range_bytes`, anywhere (a line belongs to the
range it starts in); any other file (compressed JSONL, Parquet, Arrow) is one range, and so is a
dataset name. Each range's first line number comes from counting the newlines before it
(`CountNewlines`, mapped like any step), so a range's rows come out as `InputSource.rows` gives
them for that part of the input, numbered as a whole-file read numbers them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from sftpack.errors import SftpackError
from sftpack.execution import Executor, Step
from sftpack.io.containers import Item, file_container, file_items, line_items

RANGE_BYTES = 8 << 20
"""Largest byte range one task reads: big enough that per-task overhead is small, small enough that
a retried range costs little and every worker gets several."""
CLUSTER_MIN_RANGE_BYTES = 64 << 10
"""The smallest range on a cluster, whatever the stage's own minimum: its workers are started anyway,
and many CPUs want many ranges."""


@dataclass(frozen=True)
class InputRange:
    """One unit of reading: a byte range of a JSONL file, a whole other file, or a whole dataset."""

    index: int
    """Its place among all the ranges of a stage's inputs (task order)."""
    source: int
    """Which input (its index among the stage's inputs)."""
    label: str
    """The file, relative to the input (Row.file)."""
    path: str = ""
    """The file, absolute ("" for a dataset name)."""
    size: int = 0
    """The file's size in bytes when the range was planned (a worker checks it sees the same)."""
    start: int = 0
    end: int = 0
    whole: bool = True
    """The whole file (or dataset): `start`/`end` unused."""
    first_line: int = 1
    """The line number of the first line starting in [start, end)."""


def byte_ranges(sources: list[Any], workers: int, min_bytes: int, distributed: bool = False) -> list[InputRange]:
    """The units of work for `sources` (readers.InputSource), sized for `workers`: about four ranges a
    worker, RANGE_BYTES at most and `min_bytes` at least (a stage's smallest range worth a task: below
    it, starting a worker costs more than it saves); first lines not yet counted (`numbered`).

    Raises:
        SftpackError: a dataset name when `distributed` (nodes read files, and it has none).
    """
    for source in sources if distributed else ():
        if not source.files:
            raise SftpackError(f"{source.spec}: --ray reads input files on the nodes, and a dataset name has none; "
                               "write it with `sftpack convert-data` first, or run without --ray")
    total = sum(os.path.getsize(f) for source in sources for f in source.files)
    min_bytes = CLUSTER_MIN_RANGE_BYTES if distributed else min_bytes
    range_bytes = int(min(RANGE_BYTES, max(min_bytes, total // (4 * workers) + 1)))
    ranges: list[InputRange] = []
    for s, source in enumerate(sources):
        if not source.files:  # a dataset name: read whole, where its cache is
            ranges.append(InputRange(len(ranges), s, f"{source.spec}[{source.split}]"))
        for path in source.files:
            label, size = source.label(path), os.path.getsize(path)
            common = {"source": s, "label": label, "path": str(Path(path).resolve()), "size": size}
            if file_container(path) != "jsonl" or size <= range_bytes:
                ranges.append(InputRange(len(ranges), end=size, **common))
                continue
            for start in range(0, size, range_bytes):
                ranges.append(InputRange(len(ranges), start=start, end=min(start + range_bytes, size), whole=False,
                                         **common))
    return ranges


class CountNewlines(Step):
    """Newlines in a range (0 for a whole file: its first line is 1)."""

    def run(self, task: InputRange) -> int:
        from sftpack.execution.cluster import check_input

        if task.whole:
            return 0
        check_input(task.path, task.size)
        count, left = 0, task.end - task.start
        with open(task.path, "rb") as handle:
            handle.seek(task.start)
            while left > 0:
                block = handle.read(min(left, 4 << 20))
                if not block:
                    break
                count += block.count(b"\n")
                left -= len(block)
        return count


def numbered(ranges: list[InputRange], executor: Executor) -> list[InputRange]:
    """`ranges` with each one's first line: 1 + the newlines before it in its file (counted by
    `executor` for files cut into several ranges)."""
    cut = [r for r in ranges if not r.whole]
    newlines = dict(zip((r.index for r in cut), executor.map(CountNewlines(), cut)))
    before: dict[str, int] = {}
    out = []
    for r in ranges:
        out.append(replace(r, first_line=before.get(r.path, 0) + 1))
        before[r.path] = before.get(r.path, 0) + newlines.get(r.index, 0)
    return out


def range_lines(path: str, start: int, end: int, first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line with its newline) for the lines starting in [start, end), blank ones too.

    `first_line` is the number the line at `start` has if a line starts there; otherwise the
    partial line is skipped and the next one gets first_line + 1. Lines are split as the readers
    split JSONL (binary readline: on b"\\n").
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
            yield number, raw
            position += len(raw)
            number += 1


def range_items(task: InputRange) -> Iterator[Item]:
    """A file range's items as containers.file_items gives them for that part of the file."""
    if task.whole:
        yield from file_items(Path(task.path))
        return
    yield from line_items(range_lines(task.path, task.start, task.end, task.first_line))
