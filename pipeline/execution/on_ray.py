"""The Ray executor: a step's tasks on a Ray Data actor pool, one actor per CPU, each set up once.

Tasks and results travel pickled (bytes columns), so a step never meets Ray Data's column types,
and results come back in task order whatever node finished first. The step rides on a subclass of
`_StepActor` (pickled by value with it), not in constructor arguments: Ray keeps those in the
object store, where a restarted actor may no longer find them. Nothing here is imported unless a
Ray address is given.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterator, Sequence

import numpy as np

from sftpack.execution.cluster import cluster_cpus, connect, leave, run_dataset
from sftpack.execution.executors import Executor
from sftpack.execution.step import Step


class _StepActor:
    step: Step

    def __init__(self):
        self.step.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [pickle.dumps(self.step.run(pickle.loads(task))) for task in batch["task"]]
        column = np.empty(len(results), dtype=object)
        column[:] = results
        return {"index": batch["index"], "result": column}


class RayExecutor(Executor):
    """Tasks on the Ray cluster at `address` (joined here, left on close)."""

    distributed = True

    def __init__(self, address: str):
        self.engine = connect(address)

    @property
    def workers(self) -> int:
        return cluster_cpus()

    def map(self, step: Step, tasks: Sequence[Any], progress: Any = None) -> Iterator[Any]:
        import ray.data

        if not tasks:
            return
        items = [{"index": i, "task": pickle.dumps(task)} for i, task in enumerate(tasks)]
        actor = type(type(step).__name__, (_StepActor,), {"step": step})
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            actor, batch_size=1, num_cpus=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.workers))
        done: dict[int, Any] = {}
        following = 0
        for row in run_dataset(dataset.iter_rows()):
            index = int(row["index"])
            done[index] = pickle.loads(row["result"])
            if progress is not None:
                progress.update(step.units(tasks[index], done[index]))
            while following in done:
                yield done.pop(following)
                following += 1
        if following != len(tasks):
            from sftpack.errors import SftpackError

            raise SftpackError(f"--ray: tasks {sorted(set(range(len(tasks))) - set(done))[:5]} came back from no "
                               "worker", exit_code=1)

    def describe(self) -> dict[str, Any]:
        return self.engine

    def close(self) -> None:
        leave()
