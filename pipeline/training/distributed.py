"""Which data-parallel strategy a run asked for, running it as asked on CPU ranks, and what ran.

    accelerate launch env (ACCELERATE_USE_FSDP/DEEPSPEED, WORLD_SIZE) + train.fsdp/deepspeed
        ──requested──> "single" | "ddp" | "fsdp" | "deepspeed"
    CPU ranks: ddp -> gloo DDP; fsdp -> gloo FSDP2 (configure_cpu_fsdp); deepspeed -> refused
    trainer after train ──describe──> sftpack_run.json `distributed`: strategy, sharding,
                                      parameters held by each rank (counted, not assumed)
    trainer after build ──check──> refuses a run whose accelerator is not what was asked

Why CPU FSDP needs help: accelerate 1.15 turns FSDP on only for accelerator devices
(`AcceleratorState` sets DistributedType.FSDP for MULTI_GPU/NPU/XPU..., never for MULTI_CPU), so a
CPU launch of an FSDP config used to train plain gloo DDP while the log and the manifest said
nothing. torch's FSDP2 (`fully_shard`) itself runs on CPU with gloo; so on CPU ranks the state is
configured here as FSDP with the launch's plugin, and the Trainer is told to use that configured
state (`accelerator_config.use_configured_state`) instead of building its own.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from sftpack.errors import SftpackError

STRATEGIES = ("single", "ddp", "fsdp", "deepspeed")


def world_size() -> int:
    """Processes in this launch (WORLD_SIZE, set by accelerate launch and torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def requested(train: Mapping[str, Any]) -> str:
    """The strategy this launch asks for: the accelerate config's distributed_type (exported by
    `accelerate launch` as ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED) or the train section's
    own `fsdp` / `deepspeed` (TrainingArguments names); plain several processes mean DDP."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or train.get("deepspeed"):
        return "deepspeed"
    if _env_flag("ACCELERATE_USE_FSDP") or train.get("fsdp"):
        return "fsdp"
    return "ddp" if world_size() > 1 else "single"


def cpu_settings(train: dict[str, Any], strategy: str) -> None:
    """Set in `train` what CPU ranks need to run `strategy` as asked (unless `train` names them).

    Raises:
        SftpackError: a strategy that cannot run on CPU ranks (DeepSpeed; FSDP version 1).
    """
    if strategy == "deepspeed":
        raise SftpackError(
            "DeepSpeed was asked for (accelerate config distributed_type DEEPSPEED, or train.deepspeed), but "
            "this machine has no GPU: accelerate 1.15 starts DeepSpeed only on an accelerator and would train "
            "plain gloo DDP instead. On CPU ranks use configs/accelerate/fsdp.yaml (FSDP2: sharded "
            "parameters, gradients and optimizer state) or configs/accelerate/ddp.yaml")
    if strategy == "fsdp" and train.get("fsdp"):
        raise SftpackError(
            "train.fsdp on CPU ranks: FSDP on CPU is set up from the accelerate config; remove train.fsdp and "
            "train.fsdp_config and launch with configs/accelerate/fsdp.yaml")
    if strategy == "fsdp" and os.environ.get("FSDP_VERSION", "1") != "2":
        raise SftpackError(
            f"FSDP version {os.environ.get('FSDP_VERSION', '1')} was asked for on CPU ranks; only FSDP2 runs on "
            f"CPU (gloo). Set fsdp_version: 2 in the accelerate config's fsdp_config")
    # Without use_cpu each process would train alone instead of joining one gloo process group.
    train.setdefault("use_cpu", True)
    train.setdefault("ddp_backend", "gloo")
    if strategy == "fsdp":
        accelerator_config = dict(train.get("accelerator_config") or {})
        accelerator_config["use_configured_state"] = True
        train["accelerator_config"] = accelerator_config


def configure_cpu_fsdp(train: Mapping[str, Any]) -> None:
    """Configure accelerate's state as FSDP2 over gloo for CPU ranks, before SFTConfig sets up devices.

    The plugin is the launch's (the accelerate config's fsdp_config, exported as FSDP_* variables).
    The Trainer then builds its Accelerator on this state (`use_configured_state`, set by
    `cpu_settings`).

    Args:
        train: the train section with sftpack's defaults: its fp16/bf16 decide the mixed precision
            the Trainer will ask its Accelerator for (TrainingArguments: fp16, bf16, else the
            launch's ACCELERATE_MIXED_PRECISION), which must be the configured state's.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    mixed_precision = ("fp16" if train.get("fp16") else "bf16" if train.get("bf16")
                       else os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    AcceleratorState._reset_state(reset_partial_state=True)
    partial = PartialState(cpu=True, backend="gloo")
    plugin = FullyShardedDataParallelPlugin()
    state = AcceleratorState(mixed_precision=mixed_precision, cpu=True, fsdp_plugin=plugin,
                             dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True)
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise SftpackError(f"FSDP on CPU ranks: expected gloo processes, accelerate set up "
                           f"{state.distributed_type}; launch with configs/accelerate/fsdp.yaml")
    # Both shared states: every AcceleratorState() copies PartialState's fields over its own.
    partial.distributed_type = state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)


def running(trainer) -> str:
    """The strategy the trainer's accelerator runs."""
    from accelerate.utils import DistributedType

    kind = trainer.accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "ddp" if trainer.args.world_size > 1 else "single"


def check(trainer, asked: str) -> None:
    """Refuse a run whose accelerator would not run what was asked (never a silent downgrade).

    Raises:
        SftpackError: naming what was asked and what would have run.
    """
    ran = running(trainer)
    if ran != asked:
        raise SftpackError(f"the launch asks for {asked} but the trainer would run {ran} on "
                           f"{trainer.args.world_size} process(es); refusing rather than training something else. "
                           f"Check the accelerate config (distributed_type, num_processes) and train.fsdp/deepspeed")


def _local_numel(parameter) -> int:
    """Elements this rank stores: a DTensor's local shard (FSDP2), ZeRO-3's partition (ds_tensor;
    not run here: DeepSpeed needs a GPU), else the whole tensor."""
    if hasattr(parameter, "ds_tensor"):
        return int(parameter.ds_tensor.numel())
    local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
    return int(local.numel())


def _reshard(model) -> None:
    """Put every FSDP2 module back in its sharded state. After a forward without backward (the
    sample prompts' generate) the root module keeps its parameters gathered (FSDP2 does not reshard
    the root after forward): counted then, each rank would seem to hold the whole embedding."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def describe(trainer) -> dict[str, Any]:
    """sftpack_run.json's `distributed`: what ran, measured. Call on every rank (it gathers).

    parameters.per_rank counts the elements each rank holds (the model's unique parameters; a
    tied embedding counts once), so FSDP's sharding shows as shares that sum to the total and DDP's
    replicas as the total on every rank.
    """
    import torch

    args = trainer.args
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    _reshard(model)
    held = sum(_local_numel(p) for p in model.parameters())
    per_rank = [held]
    if args.world_size > 1:
        per_rank = [int(n) for n in trainer.accelerator.gather(torch.tensor([held])).tolist()]
    strategy = running(trainer)
    total = sum(int(getattr(p, "ds_numel", p.numel())) for p in trainer.model.parameters())
    out: dict[str, Any] = {
        "strategy": strategy,
        "world_size": args.world_size,
        "parallel_mode": str(args.parallel_mode.value),
        "backend": getattr(args.distributed_state, "backend", None),
        "sharding": _sharding(trainer, strategy),
        "parameters": {"total": total, "per_rank": per_rank},
    }
    return out


def _sharding(trainer, strategy: str) -> dict[str, Any] | None:
    """What is split across ranks, from the plugin that ran (None for DDP and one process)."""
    if strategy == "fsdp":
        plugin = trainer.accelerator.state.fsdp_plugin
        return {"fsdp_version": plugin.fsdp_version, "shards": "parameters, gradients, optimizer state",
                "reshard_after_forward": bool(plugin.reshard_after_forward),
                "state_dict_type": str(getattr(plugin.state_dict_type, "name", plugin.state_dict_type)),
                "cpu_offload": type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy",
                "auto_wrap_policy": str(os.environ.get("FSDP_AUTO_WRAP_POLICY", "")) or None}
    if strategy == "deepspeed":
        config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
        return {"zero_stage": config.get("zero_optimization", {}).get("stage")}
    return None
