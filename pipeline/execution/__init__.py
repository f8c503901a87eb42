"""How work runs, apart from what the work is: steps mapped over tasks by an executor.

    stage (validate, pack, mix)                    execution (this package: imports no stage)
    ---------------------------                    ------------------------------------------
    plan tasks (byte ranges, shards, blocks)  ──>  Executor.map(step, tasks): results in task order
    reduce the results (pure, on the driver)  <──    LocalExecutor: this process, or a fork pool
    map again, reduce, write the manifest            RayExecutor: a Ray Data actor pool

A `Step` is set up once per worker (tokenizer, renderer, checks) and then runs tasks; a task writes
only the files it names and returns a small picklable result. A local run and a Ray run execute the
same tasks, so they write the same bytes by construction. `Execution` (workers, Ray address) is
chosen once (config.data_options.execution, for the API and train alike) and is never part of a
fingerprint.
"""

from sftpack.execution.choice import Execution
from sftpack.execution.executors import Executor
from sftpack.execution.step import Step

__all__ = ["Execution", "Executor", "Step"]
