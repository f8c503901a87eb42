"""Batch, step and warmup arithmetic, and learning-rate schedules, as transformers counts them.

    target effective batch / (per-device x GPUs) ──> gradient accumulation steps
    packed rows ──> optimizer steps per epoch, total, warmup

Step counts follow transformers' Trainer exactly (`Trainer.set_initial_training_values`):

    micro-batches per epoch per GPU = ceil(rows / (per_device x gpus))
    optimizer steps per epoch       = max(ceil(micro-batches / accumulation), 1)
    total steps                     = ceil(epochs x steps per epoch)
    warmup steps                    = ceil(total x ratio) for a ratio < 1 (`get_warmup_steps`)

Learning rates per step come from transformers' own `get_scheduler` on a dummy optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# --- batch and step arithmetic ---------------------------------------------------------

FEW_STEPS = 50
"""A plan with fewer optimizer steps than this is flagged in its notes."""


@dataclass(frozen=True)
class BatchPlan:
    """Effective batch = per_device x accumulation x gpus."""

    per_device: int
    """Micro-batch per GPU."""
    gpus: int
    """Data-parallel processes."""
    accumulation: int
    """Gradient accumulation steps."""
    note: str | None = None
    """Set when the effective batch differs from the target asked for."""

    @property
    def effective(self) -> int:
        return self.per_device * self.accumulation * self.gpus


def plan_batch(per_device: int, gpus: int, target: int | None = None,
               accumulation: int | None = None) -> BatchPlan:
    """Choose the gradient accumulation steps for a target effective batch.

    Args:
        per_device: micro-batch per GPU.
        gpus: data-parallel processes.
        target: wanted effective batch; accumulation = target / (per_device x gpus), rounded
            to the nearest whole step (at least 1), with a note when not exact.
        accumulation: used as is when no target is given.

    Returns:
        The BatchPlan; `note` says when the effective batch differs from the target.
    """
    micro = per_device * gpus
    if target is None:
        return BatchPlan(per_device, gpus, accumulation or 1)
    if target < micro:
        return BatchPlan(per_device, gpus, 1, note=(
            f"target effective batch {target} is smaller than per-device x GPUs = {per_device} x {gpus} "
            f"= {micro}; using 1 accumulation step, effective batch {micro} "
            f"(lower --per-device-batch to reach {target})"))
    steps = max(1, math.floor(target / micro + 0.5))  # nearest, halves round up
    if steps * micro == target:
        return BatchPlan(per_device, gpus, steps)
    return BatchPlan(per_device, gpus, steps, note=(
        f"target effective batch {target} is not divisible by per-device x GPUs = {per_device} x {gpus} "
        f"= {micro}; rounded to {steps} accumulation steps, effective batch {steps * micro}"))


def micro_batches_per_epoch(examples: int, per_device: int, gpus: int) -> int:
    """The Trainer's len(dataloader) on each GPU: ceil(ceil(rows / gpus) / per_device).

    The distributed sampler pads to ceil(rows / gpus) rows per GPU and the last micro-batch
    is kept (drop_last is off); ceil(ceil(n/g)/b) == ceil(n/(g*b)) for positive integers.
    """
    return math.ceil(examples / (per_device * gpus))


def optimizer_steps_per_epoch(micro_batches: int, accumulation: int) -> int:
    """The Trainer's num_update_steps_per_epoch: a partial last accumulation still steps."""
    return max(math.ceil(micro_batches / accumulation), 1)


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """The Trainer's max_steps when training by epochs: ceil(epochs x steps per epoch)."""
    return math.ceil(epochs * steps_per_epoch)


def warmup_steps_for(warmup: float, total: int) -> int:
    """TrainingArguments.get_warmup_steps: below 1 a ratio (rounded up), else whole steps."""
    return int(warmup) if warmup >= 1 else math.ceil(total * warmup)


@dataclass(frozen=True)
class StepCounts:
    """The step counts of a run; the counts are None when the number of rows is unknown."""

    micro_batches_per_epoch: int | None
    """Micro-batches per GPU per epoch (the Trainer's len(dataloader))."""
    optimizer_steps_per_epoch: int | None
    """Optimizer updates per epoch."""
    total_steps: int | None
    """Optimizer updates in the whole run."""
    warmup_steps: int | None
    """Warmup in optimizer steps (known without rows when given in whole steps)."""
    warmup_ratio: float | None
    """Warmup as a share of the run (known without rows when given as a ratio)."""
    notes: tuple[str, ...] = ()
    """Surprises in the arithmetic: partial batches, warmup covering the run."""


def count_steps(examples: int | None, batch: BatchPlan, epochs: float, warmup: float,
                max_steps: int | None = None) -> StepCounts:
    """Step counts of a run as the Trainer counts them (module docstring).

    Args:
        examples: training rows; None leaves the counts unknown.
        batch: the batch plan (per-device, GPUs, accumulation).
        epochs: num_train_epochs.
        warmup: transformers 5's warmup_steps: a ratio below 1, else whole steps.
        max_steps: when given, the total regardless of epochs (as the Trainer does).

    Returns:
        The counts, with notes on partial batches and a warmup as long as the run.
    """
    if examples is None:
        return StepCounts(None, None, None, warmup_steps=int(warmup) if warmup >= 1 else None,
                          warmup_ratio=warmup if warmup < 1 else None)
    micro = micro_batches_per_epoch(examples, batch.per_device, batch.gpus)
    per_epoch = optimizer_steps_per_epoch(micro, batch.accumulation)
    total = max_steps if max_steps is not None else total_steps(epochs, per_epoch)
    warmup_steps = warmup_steps_for(warmup, total)
    notes = []
    if examples < batch.effective:
        notes.append(f"{examples} rows are fewer than one effective batch ({batch.effective}): each epoch "
                     f"is {per_epoch} optimizer step(s) on fewer rows than the effective batch")
    elif micro % batch.accumulation:
        notes.append(f"{micro} micro-batches per epoch is not a multiple of {batch.accumulation} "
                     f"accumulation steps: the last step of each epoch accumulates "
                     f"{micro % batch.accumulation}")
    if total < FEW_STEPS:
        notes.append(f"only {total} optimizer steps (fewer than {FEW_STEPS}): warmup and decay get a handful of "
                     "steps each and the loss curve says little; train more epochs or rows, or lower the "
                     "effective batch")
    if warmup_steps >= total:
        notes.append(f"warmup ({warmup_steps} steps) covers the whole run ({total} steps): "
                     "lower the warmup or train longer")
    return StepCounts(micro, per_epoch, total, warmup_steps,
                      warmup_ratio=warmup if warmup < 1 else warmup_steps / total, notes=tuple(notes))


# --- schedules -------------------------------------------------------------------------


def schedule_lrs(name: str, learning_rate: float, warmup_steps: int, total: int,
                 steps: list[int]) -> list[float]:
    """Learning rate at each optimizer step in `steps`, from transformers' `get_scheduler`.

    Step i is the rate the (i+1)-th optimizer update uses (the scheduler steps after each
    update); step `total` is where the schedule ends.
    """
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total)
    # LambdaLR: lr(step) = base_lr * lambda(step); evaluating the lambda avoids stepping
    # the scheduler through every step of a long run.
    (factor,) = scheduler.lr_lambdas
    return [learning_rate * factor(step) for step in steps]


def sample_steps(total: int, warmup: int) -> list[tuple[str, int]]:
    """(label, step) for the text table: start, warmup end, 25/50/75/100% of the steps."""
    points = [("start", 0), ("warmup end", warmup)]
    points += [(f"{pct}%", math.floor(total * pct / 100 + 0.5)) for pct in (25, 50, 75, 100)]
    return points


def plot_steps(total: int, warmup: int, max_points: int = 2000) -> list[int]:
    """Steps to draw: all of them for short runs, else an even subsample plus warmup end."""
    if total <= max_points:
        return list(range(total + 1))
    stride = total / max_points
    steps = {round(i * stride) for i in range(max_points + 1)} | {warmup, total}
    return sorted(steps)
