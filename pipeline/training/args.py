"""The trainer's arguments: the `train` section as written plus sftpack's fixed settings -> SFTConfig.

    train section + resolved Runtime ──sft_config──> (SFTConfig, resume)

The rows are packed already (pipeline/packing/stage.py), so the trainer never tokenizes: they go to TRL's
collator as they are on disk (`dataset_kwargs={"skip_prepare_dataset": True}`), padding-free.
"""

from __future__ import annotations

from typing import Any

from trl import SFTConfig

from sftpack.config.run_config import RunConfig
from sftpack.errors import SftpackError
from sftpack.training import distributed
from sftpack.training.runtime import Runtime


def sft_config(cfg: RunConfig, runtime: Runtime, padding_free: bool = True) -> tuple[SFTConfig, str | bool | None]:
    """Build the SFTConfig: the `train` section as written plus sftpack's fixed settings.

    Fixed (pack owns them; config.py refuses them under `train`): padding_free (False only where
    training.isolation gives the trainer its own collator: unpacked rows), no packing,
    max_length None (rows are already cut), skip_prepare_dataset. Defaults that differ from
    TRL's: bf16 follows the resolved dtype (TRL turns it on everywhere, CPU included),
    gradient checkpointing (gradient_checkpointing or activation_checkpointing) off unless
    asked, and when on, `use_reentrant: False`.

    Returns:
        (SFTConfig, resume) where resume is what `trainer.train(resume_from_checkpoint=)`
        gets: None, True (the last checkpoint in output_dir) or a checkpoint path.

    Several processes on CPU run the strategy the launch asks for (distributed.requested): gloo
    DDP, or FSDP2 on an accelerate state configured here; what cannot run there is refused.

    Raises:
        SftpackError: every conflict between keys, naming both; a strategy CPU ranks cannot run.
    """
    train = dict(cfg.train)
    resume = _pop_resume(train)
    errors = _conflicts(cfg, runtime, train)
    if errors:
        raise SftpackError(f"{cfg.source}: invalid train settings:\n  " + "\n  ".join(errors))
    strategy = distributed.requested(train)
    if runtime.device == "cpu" and distributed.world_size() > 1:
        distributed.cpu_settings(train, strategy)
    _apply_defaults(train, runtime)
    if runtime.device == "cpu" and distributed.world_size() > 1 and strategy == "fsdp":
        distributed.configure_cpu_fsdp(train)  # before SFTConfig sets up devices
    train.update(
        padding_free=padding_free,
        packing=False,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,  # the datasets hold exactly train.data.TRAIN_COLUMNS
    )
    try:
        return SFTConfig(**train), resume
    except (ValueError, TypeError) as err:
        raise SftpackError(f"{cfg.source}: TRL rejects the train section: {err}") from None


def _pop_resume(train: dict[str, Any]) -> str | bool | None:
    """Take `resume_from_checkpoint` out of `train`: None, True (true/last) or a checkpoint path."""
    resume = train.pop("resume_from_checkpoint", None)
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        return True
    if isinstance(resume, str) and resume.lower() in ("false", "none", ""):
        return None
    return None if resume is False else resume


def _conflicts(cfg: RunConfig, runtime: Runtime, train: dict[str, Any]) -> list[str]:
    """What only the run can tell (config loading checked the other pairs: config.cross_field_errors):
    a missing output_dir, train.bf16 against model.dtype once `auto` is resolved for this device,
    and evaluation without data.validation (make gives train the packed folders as overrides)."""
    errors = []
    if "output_dir" not in train:
        errors.append("train.output_dir: required (where checkpoints and the final model go)")
    if "bf16" in train and bool(train["bf16"]) != (runtime.dtype == "bfloat16"):
        errors.append(f"train.bf16 {train['bf16']} conflicts with model.dtype {cfg.model.dtype} (resolved to "
                      f"{runtime.dtype}); remove train.bf16 (it follows model.dtype) or set model.dtype to match")
    evaluates = cfg.data.validation is not None or cfg.data.recipe is not None  # a recipe's eval splits
    if not evaluates and train.get("eval_strategy", "no") != "no":
        errors.append(f"train.eval_strategy {train['eval_strategy']!r} needs data.validation (or data.recipe); set "
                      f"one or set train.eval_strategy=no")
    if not evaluates and train.get("load_best_model_at_end"):
        errors.append("train.load_best_model_at_end needs data.validation (it selects on eval_loss)")
    return errors


def _apply_defaults(train: dict[str, Any], runtime: Runtime) -> None:
    """sftpack's defaults where they differ from TRL's, set in `train` unless it names them."""
    train.setdefault("bf16", runtime.dtype == "bfloat16")
    # Pinned memory only speeds copies to an accelerator; on CPU torch warns that it is unused.
    train.setdefault("dataloader_pin_memory", runtime.device != "cpu")
    _apply_checkpointing(train)
    if train.get("load_best_model_at_end"):
        train.setdefault("metric_for_best_model", "eval_loss")
        if train["metric_for_best_model"] in ("eval_loss", "loss"):
            train.setdefault("greater_is_better", False)


def _apply_checkpointing(train: dict[str, Any]) -> None:
    """Activation checkpointing off unless asked; when on, `use_reentrant: False`.

    transformers 5.23 renamed gradient_checkpointing* to activation_checkpointing*; both are
    accepted here, the new names are what is passed (TRL's default of True is not taken).
    """
    checkpointing = train.pop("gradient_checkpointing", None)
    kwargs = train.pop("gradient_checkpointing_kwargs", None)
    if train.get("activation_checkpointing") is None:
        train["activation_checkpointing"] = bool(checkpointing)
    if train.get("activation_checkpointing_kwargs") is None:
        train["activation_checkpointing_kwargs"] = kwargs
    if train["activation_checkpointing"]:
        merged = dict(train.get("activation_checkpointing_kwargs") or {})
        merged.setdefault("use_reentrant", False)
        train["activation_checkpointing_kwargs"] = merged
    train["gradient_checkpointing"] = train["gradient_checkpointing_kwargs"] = None
