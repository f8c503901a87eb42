"""Executors map a step over tasks, results in task order, and import nothing of any stage: the
base class and the local one (the Ray one is on_ray.py)."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any, Iterator, Sequence

from sftpack.execution.step import Step


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Executor:
    """Maps a step over tasks; a context manager (a Ray executor leaves the cluster on exit)."""

    distributed = False
    """True when tasks run on other machines (inputs and outputs must then be on shared storage)."""

    @property
    def workers(self) -> int:
        raise NotImplementedError

    def map(self, step: Step, tasks: Sequence[Any], progress: Any = None) -> Iterator[Any]:
        """step.run(task) for every task, results in task order; `progress` (a tqdm bar) is moved
        by step.units as tasks finish."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a manifest records under `engine` (information only)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_FORKED: dict[str, Step] = {}  # the step a fork pool's workers inherit, set up before the fork


def _run_forked(task: Any) -> Any:
    return _FORKED["step"].run(task)


class LocalExecutor(Executor):
    """Tasks in this process (one worker, or one task), else on a pool of forked processes.

    The step is set up here, before the fork, so the workers inherit its state (a loaded tokenizer
    costs a second; a fork costs milliseconds). Tasks are handed out one at a time, in order. A
    step must not rely on a native thread pool in a worker: one its parent already started is gone
    after the fork, and its next job waits forever (rensa's batch MinHash; mixing/dedup.py).
    """

    def __init__(self, workers: int):
        self._workers = workers

    @property
    def workers(self) -> int:
        return self._workers

    def map(self, step: Step, tasks: Sequence[Any], progress: Any = None) -> Iterator[Any]:
        step.setup()
        if self._workers == 1 or len(tasks) <= 1:
            for task in tasks:
                result = step.run(task)
                if progress is not None:
                    progress.update(step.units(task, result))
                yield result
            return
        # A worker process runs one task at a time on one core: the Rust tokenizer's own thread pool
        # would only compete with the other workers (and it warns when forked after use).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _FORKED["step"] = step
        pool = multiprocessing.get_context("fork").Pool(min(self._workers, len(tasks)))
        try:
            for task, result in zip(tasks, pool.imap(_run_forked, tasks, chunksize=1)):
                if progress is not None:
                    progress.update(step.units(task, result))
                yield result
        finally:
            pool.terminate()
            _FORKED.clear()

    def describe(self) -> dict[str, Any]:
        return {"name": "local", "workers": self._workers}
