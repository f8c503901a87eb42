"""Which data-parallel strategy a run needs: DDP when a whole replica fits on each GPU, FSDP2 when
only a shard does, neither when even the shard does not. Pure functions over byte counts.

    per-GPU bytes by component (planning/memory.py: weights, gradients, optimizer, activations)
        + GPUs + memory per GPU ──choose──> Choice: ddp | fsdp | single | none, per-GPU bytes under each
    Choice + per-GPU totals by method ──fitting_method──> full | lora | qlora (full when it fits either way)
    Choice ──accelerate_config──> the accelerate YAML (configs/accelerate/<strategy>.yaml's keys,
                                  num_processes = GPUs), written beside the run config by `plan`

Per GPU (N GPUs, W/G/O the whole model's weights, gradients, optimizer state; A activations):

    DDP   W + G + O + A          every rank holds a replica
    FSDP  (W + G + O) / N + A + U   each rank holds 1/N; U: the largest wrapped unit (one decoder
                                    layer) all-gathered in full while it runs, times 2 (the next
                                    one is prefetched)

Activations are per micro-batch and never sharded by FSDP (activation checkpointing cuts them).
"""

from __future__ import annotations


import math
from dataclasses import dataclass, replace
from typing import Any

from sftpack.planning.memory import GIB, HEADROOM, recommend  # one headroom for the method and the strategy


@dataclass(frozen=True)
class Parts:
    """A run's memory by component, in bytes, for the whole model on one device."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    """Per GPU: what one micro-batch keeps for backward (not sharded)."""
    unit: float = 0.0
    """Weights of the largest FSDP unit (one decoder layer), gathered in full while it runs."""

    @property
    def states(self) -> float:
        """What FSDP shards: weights, gradients and optimizer state."""
        return self.weights + self.gradients + self.optimizer


@dataclass(frozen=True)
class Choice:
    """What `choose` decided and the numbers it decided on."""

    strategy: str
    """single (one GPU, fits) | ddp | fsdp | none (does not fit on these GPUs)."""
    world_size: int
    gpu_bytes: float
    ddp_bytes: float
    """Per GPU if every rank held a replica."""
    fsdp_bytes: float
    """Per GPU under FSDP2 on world_size ranks."""
    min_gpus_fsdp: int | None
    """Fewest GPUs on which FSDP2 fits (None: not even on many: the activations alone do not fit)."""
    reason: str
    checkpointing: bool = False
    """It fits only with activation checkpointing (full_finetune_choice)."""

    @property
    def per_gpu_bytes(self) -> float:
        return self.fsdp_bytes if self.strategy == "fsdp" else self.ddp_bytes


def full_finetune_choice(by_checkpointing: dict, layers: int, world_size: int, gpu_memory_gib: float) -> Choice:
    """DDP, FSDP2 or neither for a full fine-tune, from planning.memory's estimate of one unsharded
    replica (`by_checkpointing[checkpointing]["full"]`); with activation checkpointing when only
    that fits, and the reason says so."""
    def choice(checkpointing: bool) -> Choice:
        full = by_checkpointing[checkpointing]["full"]
        parts = Parts(weights=full.weights, gradients=full.gradients, optimizer=full.optimizer,
                      activations=full.activations, unit=full.weights / max(layers, 1))
        return choose(parts, world_size, gpu_memory_gib * GIB)

    plain = choice(False)
    checkpointed = choice(True) if plain.strategy == "none" else None
    if checkpointed is None or checkpointed.strategy == "none":
        return plain
    return replace(checkpointed, checkpointing=True, reason=f"{checkpointed.reason} (with activation checkpointing: "
                                                    f"train.gradient_checkpointing=true)")


def fitting_method(totals: dict[bool, dict[str, float]], choice: Choice,
                   gpu_memory: float) -> tuple[str | None, bool | None]:
    """The cheapest method that fits, without activation checkpointing before with it: full when it fits
    on these GPUs as the strategy runs it (a replica each, or FSDP2 shards: `choice`, from
    full_finetune_choice), else lora, then qlora (a replica each: memory.recommend).

    Returns:
        (method, True when it fits only with activation checkpointing else None); (None, None): none fits.
    """
    for checkpointing in (False, True):
        if choice.strategy != "none" and choice.checkpointing == checkpointing:
            return "full", checkpointing or None
        adapter = recommend({m: t for m, t in totals[checkpointing].items() if m != "full"}, gpu_memory)
        if adapter is not None:
            return adapter, checkpointing or None
    return None, None


def ddp_bytes(parts: Parts) -> float:
    """Per GPU under DDP (or on one GPU): the whole replica plus activations."""
    return parts.states + parts.activations


def fsdp_bytes(parts: Parts, world_size: int) -> float:
    """Per GPU under FSDP2 on `world_size` ranks: a 1/N shard, activations, two gathered units."""
    return parts.states / world_size + parts.activations + 2 * parts.unit


def parameters_per_rank(total: int, world_size: int, strategy: str) -> int:
    """Parameters each rank holds: all of them under DDP, ceil(total / N) under FSDP (dim-0
    shards; per tensor the rounding can add a few elements, bench/FSDP.md compares)."""
    return math.ceil(total / world_size) if strategy == "fsdp" else total


def min_gpus_for_fsdp(parts: Parts, gpu_bytes: float, headroom: float = HEADROOM, limit: int = 4096) -> int | None:
    """The fewest ranks on which FSDP2 fits, or None when the unsharded part alone does not fit."""
    budget = gpu_bytes * headroom - parts.activations - 2 * parts.unit
    if budget <= 0:
        return None
    gpus = max(1, math.ceil(parts.states / budget))
    return gpus if gpus <= limit else None


def choose(parts: Parts, world_size: int, gpu_bytes: float, headroom: float = HEADROOM) -> Choice:
    """DDP when a replica fits on each GPU (no gathers: the least communication), else FSDP2 when a
    shard fits, else none, saying how many GPUs FSDP2 would need.

    Args:
        parts: memory by component (bytes).
        world_size: GPUs (data-parallel ranks).
        gpu_bytes: memory of one GPU.
        headroom: share of gpu_bytes a plan may fill.

    Raises:
        ValueError: world_size < 1 or gpu_bytes <= 0 (the plan stage checks its flags first).
    """
    if world_size < 1 or gpu_bytes <= 0:
        raise ValueError(f"world_size {world_size} and gpu_bytes {gpu_bytes} must be positive")
    budget = gpu_bytes * headroom
    ddp, fsdp = ddp_bytes(parts), fsdp_bytes(parts, world_size)
    fewest = min_gpus_for_fsdp(parts, gpu_bytes, headroom)
    need = f"{_gib(ddp)} per GPU with a whole replica, {_gib(fsdp)} sharded over {world_size}"
    room = f"{_gib(budget)} usable of {_gib(gpu_bytes)}"
    if ddp <= budget:
        strategy = "single" if world_size == 1 else "ddp"
        reason = f"a whole replica fits ({_gib(ddp)} of {room})"
    elif world_size > 1 and fsdp <= budget:
        strategy, reason = "fsdp", f"only a shard fits: {need}; {room}"
    else:
        strategy = "none"
        more = (f"FSDP2 fits on {fewest} GPUs" if fewest else
                "the activations alone do not fit: shorter rows, a smaller micro-batch or activation checkpointing")
        reason = f"does not fit: {need}; {room}. {more}, or train LoRA/QLoRA"
    return Choice(strategy=strategy, world_size=world_size, gpu_bytes=gpu_bytes, ddp_bytes=ddp, fsdp_bytes=fsdp,
                  min_gpus_fsdp=fewest, reason=reason)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def accelerate_config(strategy: str, num_processes: int) -> dict[str, Any]:
    """The accelerate config for `strategy` (the keys of configs/accelerate/<strategy>.yaml;
    tests/test_plan_strategy.py keeps them equal).

    Raises:
        ValueError: a strategy with no config (single and none need none).
    """
    common = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "num_processes": num_processes,
              "machine_rank": 0, "mixed_precision": "no", "use_cpu": False, "main_training_function": "main",
              "rdzv_backend": "static", "same_network": True}
    if strategy == "ddp":
        return {**common, "distributed_type": "MULTI_GPU", "dynamo_config": {"dynamo_backend": "NO"}}
    if strategy == "fsdp":
        return {**common, "distributed_type": "FSDP", "fsdp_config": {
            "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_cpu_ram_efficient_loading": True, "fsdp_offload_params": False,
            "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_activation_checkpointing": False}}
    raise ValueError(f"no accelerate config for strategy {strategy!r} (ddp or fsdp)")


def accelerate_config_path(run_config_path: str) -> str:
    """Where `plan --write-config run.yaml` puts the accelerate config: run.accelerate.yaml beside it."""
    from pathlib import Path

    path = Path(run_config_path)
    return str(path.with_name(f"{path.stem}.accelerate.yaml"))


def launch_strategy(choice: Choice | None, method: str | None) -> str | None:
    """The accelerate strategy a planned run launches with: the full fine-tune's (ddp or fsdp) when
    the method is full; ddp for an adapter (lora, qlora) on several GPUs, each holding the frozen base
    and the adapter (the replica fitting_method sized); None on one GPU, or when nothing fits."""
    if choice is None or method is None:
        return None
    if method == "full":
        return choice.strategy if choice.strategy in ("ddp", "fsdp") else None
    return "ddp" if choice.world_size > 1 else None


def write_accelerate_config(choice: Choice | None, method: str | None, run_config_path: str) -> str | None:
    """Write the accelerate config of the planned run (`launch_strategy`) beside the run config (atomically).

    Returns:
        The path written, or None when the run needs none (one GPU, nothing fits).
    """
    strategy = launch_strategy(choice, method)
    if strategy is None:
        return None
    import yaml

    from sftpack.store.atomic import atomic_file

    path = accelerate_config_path(run_config_path)
    reason = choice.reason if method == "full" else f"{method}: the base model and the adapter on every GPU"
    header = (f"# written by sftpack plan: {strategy} on {choice.world_size} GPUs ({reason})\n"
              f"#   accelerate launch --config_file {path} -m sftpack train --config {run_config_path}\n")
    with atomic_file(path) as handle:
        handle.write(header + yaml.safe_dump(accelerate_config(strategy, choice.world_size), sort_keys=False))
    return path
