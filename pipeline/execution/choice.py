"""`Execution`: the one value that says where a stage's tasks run, `workers` processes on this machine
(by default the cores this process may use) or a Ray cluster at `ray`. The output never depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftpack.errors import SftpackError
from sftpack.execution.executors import Executor, LocalExecutor, available_cores


@dataclass(frozen=True)
class Execution:
    """Where a stage's tasks run. Never part of a fingerprint: any value writes the same bytes."""

    workers: int | None = None
    """Processes on this machine; None: the available cores. 1 runs every task in this process."""
    ray: str | None = None
    """A Ray cluster's address (local, auto, HOST:PORT, ray://HOST:PORT): tasks run there instead."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise SftpackError(f"workers (--num-proc) {self.workers}: must be at least 1")

    def executor(self) -> "Executor":
        """The executor for this choice (joins the Ray cluster when one is named); close it after use."""
        if self.ray:
            from sftpack.execution.on_ray import RayExecutor

            return RayExecutor(self.ray)
        return LocalExecutor(self.workers or available_cores())
