"""A step: one kind of work that an executor maps over tasks (datatrove's PipelineStep, reduced)."""

from __future__ import annotations

from typing import Any


class Step:
    """What every worker receives: small (options and paths; it is pickled for Ray, inherited by a
    fork), with `setup` loading what is heavy once per worker and `run` doing one task.

    A task writes only the files it names (staged under a temp name and renamed, so a retried
    task rewrites the same bytes) and returns a small picklable result for the driver's reduce.
    """

    def setup(self) -> None:
        """Load this worker's state (a tokenizer, a renderer, checks); runs once before any task."""

    def run(self, task: Any) -> Any:
        """Do one task; return its result."""
        raise NotImplementedError

    def units(self, task: Any, result: Any) -> int:
        """How far one finished task moves the driver's progress bar (lines, bytes, rows)."""
        return 1
