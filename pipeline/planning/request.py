"""What `sftpack plan` is asked (`PlanRequest`) and what it answers (`Plan`): data only, read by
the planning stage and by every output format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from sftpack.planning.table import SizeRow


@dataclass(frozen=True)
class PlanRequest:
    """What `sftpack plan` was asked; None means "not given" (base config, then table)."""

    model: str | None = None
    """Model folder with config.json; its parameters are counted without loading weights."""
    params: str | None = None
    """Parameter count as text: 7e9, 7B, 135M, 134515008."""
    gpus: int = 1
    """Data-parallel processes (GPUs)."""
    per_device_batch: int | None = None
    """Micro-batch per GPU (per_device_train_batch_size)."""
    target_batch: int | None = None
    """Wanted effective batch; the accumulation steps are chosen to reach it."""
    examples: int | None = None
    """Training rows (packed rows, what the trainer iterates over)."""
    data: str | None = None
    """Packed folder whose manifest gives the rows (totals.rows) and max_length."""
    epochs: float | None = None
    """Passes over the rows (num_train_epochs)."""
    config: str | None = None
    """Base run config: its model/data/train values fill what the flags leave out."""
    gpu_memory: float | None = None
    """GiB per GPU: the plan recommends the cheapest method that fits (full, lora, qlora) and, for
    `gpus`, DDP or FSDP2 (planning/memory.py, planning/strategy.py)."""


@dataclass(frozen=True)
class Plan:
    """The planned run: `values` are the `--json` object; the rest explains them."""

    num_params: int
    """Parameter count the row was picked by."""
    params_from: str
    """Where the count came from (model folder or --params)."""
    row: SizeRow
    """The size row used."""
    values: Mapping[str, Any]
    """Exactly plan.format.PLAN_KEYS."""
    sources: Mapping[str, str]
    """Planned key -> flag | config | table | default | computed."""
    examples: int | None
    """Training rows the steps are computed from; None: steps unknown."""
    examples_from: str
    """Where the rows came from."""
    micro_batches_per_epoch: int | None
    """Micro-batches per GPU per epoch (the Trainer's len(dataloader))."""
    max_length: int | None
    """Row length in tokens (from the manifest or base config), for tokens per step."""
    notes: tuple[str, ...] = ()
    """Things the user should know (rounding, out-of-table sizes, estimates)."""
    base_config: Any = None
    """The base RunConfig when --config was given."""
    model_path: str | None = None
    """Model folder for a written config."""
    data_path: str | None = None
    """Packed folder for a written config (--data)."""
    extra_train: Mapping[str, Any] = field(default_factory=dict)
    """Planned train values that are not in the JSON but go into a written config."""
    strategy: Any = None
    """planning.strategy.Choice when --gpu-memory was given: ddp, fsdp, single or none."""
    memory: Mapping[str, Any] = field(default_factory=dict)
    """Per GPU, by method, with and without activation checkpointing: planning.memory.Memory."""
