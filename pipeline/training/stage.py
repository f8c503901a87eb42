"""The train stage: packed shard folders -> a fine-tuned model, with TRL's SFTTrainer.

    data.train / data.validation ──train.data.prepare_data──> packed folders (raw data goes
                                  through validate + pack, reused by fingerprint; rejects stop
                                  it unless data.allow_rejects)
    model.name_or_path ──train.runtime (resolve_runtime, load_model)──> model, tokenizer
    train section + sftpack's settings ──train.args.sft_config──> SFTConfig
    trainer.build_trainer ──> PackedSFTTrainer (+ monitors)
    run: .train() ──> output_dir/checkpoint-*, output_dir/final,
                      output_dir/sftpack_config.yaml (first), output_dir/sftpack_run.json (last)

The trainer never tokenizes: rows go to TRL's collator as they are on disk
(`dataset_kwargs={"skip_prepare_dataset": True}`), padding-free. For a batch of two rows,
seq_lengths [[3, 2], [4]]:

    input_ids     [a a a b b c c c c]          one row, no padding, no attention_mask
    position_ids  [0 1 2 0 1 0 1 2 3]          restart per sequence (from seq_lengths)
    labels        [- a a - b - c c c]          the first token of each sequence is not a
                                               target, so nothing is predicted across a boundary

With no attention_mask, no cache (`use_cache=False`, set by SFTTrainer.compute_loss) and
position_ids that restart, transformers' masking (`find_packed_sequence_indices`) builds a
block-diagonal causal mask for sdpa and eager, and flash-attention and the varlen kernels of
linear-attention and Mamba layers get `cu_seq_lens` and `seq_idx` from the collator. Whether that
keeps sequences apart for this model, attention and installed kernels is decided before the first
step by a probe on a tiny copy of the model's config (train.isolation); where it does not, the same
rows train unpacked, one sequence per batch row (train.data.UnpackedCollator), and the run says so.
sftpack_run.json records the outcome under `isolation`.

`run(cfg)` takes the whole RunConfig rather than (inputs, out_dir, cfg): the inputs are
`data.train`/`data.validation` and the output folder is `train.output_dir`, both already in
the config and overridable with dotted keys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import TrainerCallback

from sftpack import __version__
from sftpack.config.run_config import RunConfig, write_config
from sftpack.errors import SftpackError
from sftpack.training import distributed
from sftpack.training.adapters import parameter_counts
from sftpack.training.generation import answer_prompts
from sftpack.training.isolation import describe
from sftpack.store.packed_folder import PackedFolder
from sftpack.training.trainer import Session, build_trainer, tracker_settings

logger = logging.getLogger("sftpack.train")

RUN_CONFIG = "sftpack_config.yaml"
RUN_MANIFEST = "sftpack_run.json"
FINAL_DIR = "final"


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The highest-step checkpoint-N that was written to the end.

    The Trainer writes trainer_state.json last, so a checkpoint killed mid-save lacks it and is
    skipped (with a warning) rather than resumed from.
    """
    if not output_dir.is_dir():
        return None
    steps = sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    for _, path in reversed(steps):
        if (path / "trainer_state.json").is_file():
            return str(path)
        logger.warning("%s: incomplete (no trainer_state.json, killed while saving?); skipped", path)
    return None


def _resolve_resume(resume: str | bool | None, output_dir: Path) -> str | None:
    if resume is True:
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise SftpackError(f"train.resume_from_checkpoint: no checkpoint-* folder in {output_dir}; "
                               f"remove the key to start a fresh run")
        return last
    if resume is not None and not Path(resume).is_dir():
        raise SftpackError(f"train.resume_from_checkpoint {resume}: not a checkpoint folder")
    return resume


def run(cfg: RunConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Train, evaluate, checkpoint, save `output_dir/final`, write the run manifest.

    Args:
        cfg: the run config (inputs: data.train/validation; output: train.output_dir).
        callbacks: extra TrainerCallbacks.

    Returns:
        The run manifest (also written to output_dir/sftpack_run.json by the main process):
        status (completed | early_stopped | stopped_nonfinite), steps, epochs, best eval loss
        and checkpoint, final path, health warnings, data fingerprints, runtime, versions.

    Raises:
        SftpackError: config, model or data problems, or a resume without a checkpoint.
    """
    with tracker_settings(dict(cfg.train)):
        return _run(cfg, callbacks)


def _run(cfg: RunConfig, callbacks: Sequence[TrainerCallback]) -> dict[str, Any]:
    started = time.time()
    session = build_trainer(cfg, callbacks)
    trainer = session.trainer
    distributed.check(trainer, distributed.requested(cfg.train))
    output_dir = Path(trainer.args.output_dir)
    resume = _resolve_resume(session.resume, output_dir)
    if trainer.is_world_process_zero():
        write_config(output_dir / RUN_CONFIG, cfg)
    if resume:
        logger.info("resuming from %s", resume)
    prompts, sample_tokens = list(cfg.monitor.sample_prompts), cfg.monitor.sample_max_new_tokens
    tokenizer = trainer.processing_class
    before = answer_prompts(trainer.model, tokenizer, prompts, sample_tokens) if prompts else []
    result = trainer.train(resume_from_checkpoint=resume)
    saving = time.time()
    status, final = _save_final(session, output_dir)
    saved_in = round(time.time() - saving, 3)
    samples = [{"prompt": p, "before": b, "after": a} for p, b, a in
               zip(prompts, before, answer_prompts(trainer.model, tokenizer, prompts, sample_tokens))] if final else []
    _finish_wandb()  # flush the offline run: complete on disk and ready for `wandb sync`
    manifest = _run_manifest(cfg, session, resume, result, status, final, samples, started, saved_in)
    if trainer.is_world_process_zero():
        from sftpack.store.atomic import write_json

        write_json(output_dir / RUN_MANIFEST, manifest)
    return manifest


def _save_final(session: Session, output_dir: Path) -> tuple[str, Path | None]:
    """The run's status, and output_dir/final with the model saved there (None after a non-finite stop)."""
    trainer, state = session.trainer, session.trainer.state
    if session.health.stopped_nonfinite:
        return "stopped_nonfinite", None  # NaN weights are not a model
    max_reached = state.global_step >= state.max_steps
    final = output_dir / FINAL_DIR
    trainer.save_model(str(final))  # the best model when load_best_model_at_end
    return ("completed" if max_reached else "early_stopped"), final


def _run_manifest(cfg: RunConfig, session: Session, resume: str | None, result: Any, status: str,
                  final: Path | None, samples: list[dict[str, str]], started: float,
                  saved_in: float) -> dict[str, Any]:
    """What sftpack_run.json holds (keys in the order written); see `run`."""
    trainer = session.trainer
    state = trainer.state
    return {
        "sftpack_version": __version__,
        "status": status,
        "resumed_from": resume,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": state.epoch,
        "train_loss": result.training_loss,
        "train_seconds": result.metrics.get("train_runtime"),
        "best_eval_loss": state.best_metric,
        "best_checkpoint": state.best_model_checkpoint,
        "final": str(final) if final else None,
        "final_save_seconds": saved_in,  # FSDP gathers the full state dict here
        "nonfinite_saved_to": trainer.nonfinite_saved_to,
        "health_warnings": [dataclasses.asdict(w) for w in session.health.warnings],
        "samples": samples,
        **parameter_counts(trainer.model),
        "tokens": {"total": session.metrics.counter.total, "trained": session.metrics.counter.trained},
        "data": _data_identities(session),
        "runtime": dataclasses.asdict(session.runtime),
        "isolation": describe(session.isolation),
        "distributed": distributed.describe(trainer),
        "versions": _versions(),
        "config": cfg.to_dict(),
        "seconds": round(time.time() - started, 3),
    }


def _finish_wandb() -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _data_identities(session: Session) -> dict[str, Any]:
    """The packed folders trained and evaluated on: `validation` is one, or one per recipe source."""
    data = {"train": _data_identity(session.train_dir)}
    if isinstance(session.val_dir, dict):
        data["validation"] = {name: _data_identity(path) for name, path in session.val_dir.items()}
    elif session.val_dir:
        data["validation"] = _data_identity(session.val_dir)
    return data


def _data_identity(folder: Path) -> dict[str, Any]:
    packed = PackedFolder.at(folder)
    manifest = packed.manifest if packed else {}
    return {"path": str(folder), "fingerprint": manifest.get("fingerprint"), "totals": manifest.get("totals"),
            "stop_markers": manifest.get("tokenizer", {}).get("stop_markers")}  # what export's generation_config stops on


def _versions() -> dict[str, str]:
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__}


def load_run_manifest(output_dir: str | Path) -> dict[str, Any] | None:
    path = Path(output_dir) / RUN_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
