"""The train stage: packed shard folders -> a fine-tuned model, with TRL's SFTTrainer.

    data.train / data.validation ──prepare_data──> packed folders (raw data goes through
                                                    validate + pack, reused by fingerprint;
                                                    rejects stop it unless data.allow_rejects)
    model.name_or_path ──resolve_runtime, load_model──> model (dtype, attention), tokenizer
    train section + sftpack's settings ──sft_config──> SFTConfig
    PackedSFTTrainer(+ monitors).train() ──> output_dir/checkpoint-*, output_dir/final,
                                             output_dir/sftpack_config.yaml (first),
                                             output_dir/sftpack_run.json (last)

The trainer never tokenizes: rows go to TRL's collator as they are on disk
(`dataset_kwargs={"skip_prepare_dataset": True}`), padding-free. For a batch of two rows,
seq_lengths [[3, 2], [4]]:

    input_ids     [a a a b b c c c c]          one row, no padding, no attention_mask
    position_ids  [0 1 2 0 1 0 1 2 3]          restart per sequence (from seq_lengths)
    labels        [- a a - b - c c c]          the first token of each sequence is not a
                                               target, so nothing is predicted across a boundary

With no attention_mask, no cache (`use_cache=False`, set by SFTTrainer.compute_loss) and
position_ids that restart, transformers' masking (`find_packed_sequence_indices`) builds a
block-diagonal causal mask for sdpa and eager, and flash-attention gets `cu_seq_lens` from
the collator: sequences never attend to each other (tests/test_train.py proves it).

`run(cfg)` takes the whole RunConfig rather than (inputs, out_dir, cfg): the inputs are
`data.train`/`data.validation` and the output folder is `train.output_dir`, both already in
the config and overridable with dotted keys.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import DefaultFlowCallback, EarlyStoppingCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from pipeline import __version__
from pipeline.config import ModelConfig, RunConfig, write_config
from pipeline.errors import SftpackError
from pipeline.generation import answer_prompts
from pipeline.monitoring import HealthCallback, MetricsCallback, TokenCounter
from pipeline.shards import IGNORE_INDEX, MANIFEST, read_manifest, verify_folder

logger = logging.getLogger("sftpack.train")

RUN_CONFIG = "sftpack_config.yaml"
RUN_MANIFEST = "sftpack_run.json"
FINAL_DIR = "final"
# Columns the collator reads; example_ids stay on disk (provenance only).
TRAIN_COLUMNS = ["input_ids", "labels", "seq_lengths"]


# ---------------------------------------------------------------- device, dtype, attention

@dataclass(frozen=True)
class Runtime:
    """What `model.dtype` / `model.attn_implementation` resolved to on this machine, and why."""

    device: str
    """cuda (with the GPU name) or cpu."""
    dtype: str
    """bfloat16 | float32."""
    attn_implementation: str
    """flash_attention_2 | sdpa | eager."""
    reason: str
    """One line for the log: why these were chosen."""


def resolve_runtime(model: ModelConfig) -> Runtime:
    """Resolve `auto` dtype and attention for the visible device.

    auto picks bf16 + flash_attention_2 on a CUDA GPU of compute capability >= 8.0 (Ampere or
    newer) with flash-attn installed, bf16 + sdpa on such a GPU without flash-attn, and
    float32 + sdpa on CPU or older GPUs.

    Raises:
        SftpackError: flash_attention_2 or bfloat16 asked for where they cannot run.
    """
    cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if cuda else (0, 0)
    ampere = cuda and capability >= (8, 0)
    has_flash = importlib.util.find_spec("flash_attn") is not None
    device = f"cuda ({torch.cuda.get_device_name()}, sm_{capability[0]}{capability[1]})" if cuda else "cpu"
    why = []
    errors = []

    dtype = model.dtype
    if dtype == "auto":
        bf16_ok = cuda and torch.cuda.is_bf16_supported()
        dtype = "bfloat16" if bf16_ok else "float32"
        why.append("dtype auto -> " + ("bfloat16 (GPU supports bf16)" if bf16_ok else
                                       "float32 (" + ("GPU without bf16" if cuda else "CPU") + ")"))
    elif dtype == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        errors.append(f"model.dtype bfloat16: this GPU ({device}) has no bf16; use model.dtype=float32")

    attn = model.attn_implementation
    if attn == "auto":
        if ampere and has_flash:
            attn = "flash_attention_2"
            why.append("attention auto -> flash_attention_2 (flash-attn installed, Ampere or newer)")
        else:
            attn = "sdpa"
            reason = ("no CUDA GPU" if not cuda else "GPU older than Ampere" if not ampere
                      else "flash-attn not installed (pip install flash-attn)")
            why.append(f"attention auto -> sdpa ({reason})")
    elif attn == "flash_attention_2":
        if not has_flash:
            errors.append("model.attn_implementation flash_attention_2: flash-attn is not installed; "
                          "pip install flash-attn, or use sdpa")
        if not ampere:
            errors.append(f"model.attn_implementation flash_attention_2: needs an Ampere or newer CUDA GPU, "
                          f"this machine has {device}; use sdpa")
    if errors:
        raise SftpackError("\n  ".join(["cannot run the model as configured:"] + errors))
    return Runtime(device=device, dtype=dtype, attn_implementation=attn,
                   reason="; ".join(why) or "dtype and attention set explicitly")


def load_model(model: ModelConfig, runtime: Runtime):
    """Load the causal LM and its tokenizer; the pad token falls back to eos.

    Returns:
        (model, tokenizer).

    Raises:
        SftpackError: the model folder is missing or not loadable.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model.name_or_path
    if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SftpackError(f"model.name_or_path {path}: folder not found (and the hub is offline); "
                           f"run `make model` or point it at a local HF model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, runtime.dtype), attn_implementation=runtime.attn_implementation)
    except (OSError, ValueError) as err:
        raise SftpackError(f"model.name_or_path {path}: cannot load: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer has no pad token: using eos %r", tokenizer.eos_token)
    return lm, tokenizer


# ---------------------------------------------------------------- data

def is_packed_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def prepare_data(cfg: RunConfig) -> tuple[Path, Path | None]:
    """Packed folders for `data.train` and `data.validation`: the one way into training.

    A packed folder is used as it is. Anything else (a file, a folder or glob of data, a cached
    dataset name; any layout validate reads, `data.format` naming it) goes through validate and
    pack into `data.out_dir` (`validated/`, `packed/`); pack reuses an existing folder with the
    same fingerprint, so a second run re-tokenizes nothing. One reject policy, `data.allow_rejects`:
    false (default, as `make validate`) stops on a rejected line naming the rejects file.

    Returns:
        (train folder, validation folder or None).

    Raises:
        SftpackError: data.train missing, an input that cannot be read, a folder left by a pack
            that did not finish, rejected lines without data.allow_rejects, no valid line at all.
    """
    data = cfg.data
    if not data.train:
        raise SftpackError("data.train: not set; give a messages JSONL or a packed folder "
                           "(e.g. data.train=out/packed/<fingerprint>)")
    train = _packed_path("data.train", data.train, cfg)
    validation = _packed_path("data.validation", data.validation, cfg) if data.validation else None
    return train, validation


def _packed_path(key: str, value: str, cfg: RunConfig) -> Path:
    """`value` itself when it is a packed folder, else what validate and pack make of it."""
    path = Path(value)
    if is_packed_folder(path):
        return path
    if path.is_dir() and (path / "stats.parquet").is_file():  # pack writes it; only a packed folder has one
        raise SftpackError(f"{key} {path}: a folder without {MANIFEST}; not a (complete) packed folder. "
                           f"Re-run `sftpack pack`, or give the raw data")
    return _validate_and_pack(key, value, cfg)


def _validate_and_pack(key: str, spec: str, cfg: RunConfig) -> Path:
    """Raw data -> data.out_dir/validated/<name>.jsonl -> data.out_dir/packed/<fingerprint>/.

    Raises:
        SftpackError: unreadable input; rejected lines unless data.allow_rejects; no valid line.
    """
    from pipeline import pack, validate
    from pipeline.readers import ReadOptions

    out = Path(cfg.data.out_dir)
    try:
        checked = validate.run([spec], out / "validated", validate.ValidateConfig(
            tokenizer=cfg.model.name_or_path, allow_rejects=cfg.data.allow_rejects), ReadOptions(cfg.data.format))
    except SftpackError as err:
        raise SftpackError(f"{key}: {err}", exit_code=err.exit_code) from None
    result = checked["files"][0]
    counts = result["counts"]
    rejects = out / "validated" / result["outputs"]["rejects"]["path"]
    if not counts["kept"]:
        raise SftpackError(f"{key} {spec}: no valid line (all {counts['read'] - counts['blank']} rejected); see "
                           f"{rejects}", exit_code=1)
    if counts["rejected"] and not cfg.data.allow_rejects:
        rules = ", ".join(f"{k.removeprefix('rejected_')}={v}" for k, v in counts.items() if k.startswith("rejected_"))
        raise SftpackError(f"{key} {spec}: {counts['rejected']} of {counts['read']} lines rejected ({rules}); see "
                           f"{rejects}. Fix or drop them, or set data.allow_rejects=true to train on the "
                           f"{counts['kept']} kept", exit_code=1)
    if counts["rejected"]:
        logger.warning("%s: %d of %d lines rejected (see %s); training on the %d kept (data.allow_rejects)", spec,
                       counts["rejected"], counts["read"], rejects, counts["kept"])
    kept = out / "validated" / result["outputs"]["kept"]["path"]
    manifest = pack.run([kept], out / "packed", pack.PackConfig.from_run_config(cfg))
    logger.info("%s -> %s (%s)", spec, manifest["path"], "reused" if manifest.get("reused") else "packed")
    return Path(manifest["path"])


def load_packed(folder: Path, tokenizer, key: str):
    """Open a packed folder for training; check it was made with this model's tokenizer.

    Raises:
        SftpackError: vocabulary mismatch, or missing columns.
    """
    import datasets

    from pipeline.fingerprint import tokenizer_identity

    problems = verify_folder(folder)
    if problems:
        raise SftpackError(f"{key} {folder}: failed verification, refusing to train on it: {problems[0]}"
                           f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                           f"re-run `sftpack pack` to rebuild it")
    manifest = read_manifest(folder) or {}
    packed_vocab = manifest.get("tokenizer", {}).get("vocab_sha256")
    ours = tokenizer_identity(tokenizer, None)["vocab_sha256"]
    if packed_vocab and packed_vocab != ours:
        raise SftpackError(
            f"{key} {folder}: packed with tokenizer {manifest['tokenizer'].get('name_or_path')!r} whose "
            f"vocabulary differs from model.name_or_path's; re-pack with the model's tokenizer")
    ds = datasets.load_from_disk(str(folder))
    missing = [c for c in TRAIN_COLUMNS if c not in ds.column_names]
    if missing:
        raise SftpackError(f"{key} {folder}: columns {missing} missing; not an sftpack packed folder")
    return ds.select_columns(TRAIN_COLUMNS)


def rows_holding(ds, examples: int) -> int:
    """How many leading rows of a packed dataset hold at least `examples` sequences (all if fewer)."""
    seen = row = 0
    for batch in ds.select_columns(["seq_lengths"]).iter(batch_size=1024):  # never the whole column
        for lengths in batch["seq_lengths"]:
            seen, row = seen + len(lengths), row + 1
            if seen >= examples:
                return row
    return len(ds)


# ---------------------------------------------------------------- SFTConfig

def sft_config(cfg: RunConfig, runtime: Runtime) -> tuple[SFTConfig, str | bool | None]:
    """Build the SFTConfig: the `train` section as written plus sftpack's fixed settings.

    Fixed (pack owns them; config.py refuses them under `train`): padding_free, no packing,
    max_length None (rows are already cut), skip_prepare_dataset. Defaults that differ from
    TRL's: bf16 follows the resolved dtype (TRL turns it on everywhere, CPU included),
    gradient checkpointing (gradient_checkpointing or activation_checkpointing) off unless
    asked, and when on, `use_reentrant: False`.

    Returns:
        (SFTConfig, resume) where resume is what `trainer.train(resume_from_checkpoint=)`
        gets: None, True (the last checkpoint in output_dir) or a checkpoint path.

    Raises:
        SftpackError: every conflict between keys, naming both.
    """
    train = dict(cfg.train)
    errors = []
    if "output_dir" not in train:
        errors.append("train.output_dir: required (where checkpoints and the final model go)")
    resume = train.pop("resume_from_checkpoint", None)
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True
    elif isinstance(resume, str) and resume.lower() in ("false", "none", ""):
        resume = None
    if resume is False:
        resume = None
    if runtime.device == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several processes on CPU (accelerate launch --multi_gpu / torchrun on a machine without
        # GPUs): without use_cpu each process would train alone instead of joining gloo DDP.
        train.setdefault("use_cpu", True)
        train.setdefault("ddp_backend", "gloo")
    if "bf16" in train and bool(train["bf16"]) != (runtime.dtype == "bfloat16"):
        errors.append(f"train.bf16 {train['bf16']} conflicts with model.dtype {cfg.model.dtype} (resolved to "
                      f"{runtime.dtype}); remove train.bf16 (it follows model.dtype) or set model.dtype to match")
    train.setdefault("bf16", runtime.dtype == "bfloat16")
    # transformers 5.23 renamed gradient_checkpointing* to activation_checkpointing*; both are
    # accepted here, the new names are what is passed (TRL's default of True is not taken).
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
    if cfg.data.validation is None and train.get("eval_strategy", "no") != "no":
        errors.append(f"train.eval_strategy {train['eval_strategy']!r} needs data.validation; set one "
                      f"or set train.eval_strategy=no")
    if cfg.data.validation is None and train.get("load_best_model_at_end"):
        errors.append("train.load_best_model_at_end needs data.validation (it selects on eval_loss)")
    if cfg.monitor.early_stopping_patience is not None:
        if not train.get("load_best_model_at_end"):
            errors.append("monitor.early_stopping_patience needs train.load_best_model_at_end=true")
        if train.get("eval_strategy", "no") == "no":
            errors.append("monitor.early_stopping_patience needs train.eval_strategy=steps (or epoch)")
    if train.get("load_best_model_at_end"):
        train.setdefault("metric_for_best_model", "eval_loss")
        if train["metric_for_best_model"] in ("eval_loss", "loss"):
            train.setdefault("greater_is_better", False)
    if errors:
        raise SftpackError(f"{cfg.source}: invalid train settings:\n  " + "\n  ".join(errors))
    train.update(
        padding_free=True,
        packing=False,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,  # the datasets hold exactly TRAIN_COLUMNS
    )
    try:
        return SFTConfig(**train), resume
    except (ValueError, TypeError) as err:
        raise SftpackError(f"{cfg.source}: TRL rejects the train section: {err}") from None


# ---------------------------------------------------------------- trainer

class PackedSFTTrainer(SFTTrainer):
    """SFTTrainer that counts tokens (all processes) and stops on a non-finite loss.

    Counting lives here because callbacks never see batches; stopping lives here because
    `Trainer` hides NaN losses from its logs (`logging_nan_inf_filter`).
    """

    def __init__(self, *args, counter: TokenCounter, health: HealthCallback, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = counter
        self.health = health
        self.nonfinite_saved_to: str | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            # labels are already -100 at each sequence start (collator), so this counts targets.
            local = torch.stack([
                torch.tensor(inputs["input_ids"].numel(), device=inputs["labels"].device),
                (inputs["labels"] != IGNORE_INDEX).sum(),
            ])
            total, trained = self.accelerator.gather(local).view(-1, 2).sum(0).tolist()
            self.counter.total += int(total)
            self.counter.trained += int(trained)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Every process must agree, or one would stop while the others wait in all-reduce.
        finite = bool(self.accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all())
        if not finite and not self.health.stopped_nonfinite:
            step = self.state.global_step + 1
            saved = Path(self.args.output_dir) / f"nonfinite-step-{step}"
            self.save_model(str(saved))  # the weights before this step's update
            self.nonfinite_saved_to = str(saved)
            self.health.nonfinite_loss(step, float(loss.detach().float().cpu()), str(saved))
        return loss


def _insert_monitors(trainer, monitors: Sequence[TrainerCallback]) -> None:
    """Put monitors after DefaultFlowCallback (so their control changes win) and before the
    trackers (so the keys they add to `logs` reach TensorBoard and W&B)."""
    callbacks = trainer.callback_handler.callbacks
    position = max((i + 1 for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)), default=0)
    for offset, monitor in enumerate(monitors):
        callbacks.insert(position + offset, monitor)


def configure_trackers(train: dict[str, Any]) -> None:
    """W&B offline when no API key is set; W&B files go beside the run unless WANDB_DIR is set."""
    report_to = train.get("report_to") or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    if "wandb" in report_to or "all" in report_to:
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
            logger.info("WANDB_API_KEY unset: W&B runs offline; upload later with `wandb sync %s/wandb/offline-run-*`",
                        train.get("output_dir"))
        os.environ.setdefault("WANDB_DIR", str(train.get("output_dir", ".")))
        Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
        if train.get("run_name"):
            os.environ.setdefault("WANDB_NAME", str(train["run_name"]))


@dataclass
class Session:
    """Everything a run needs, built by `build_trainer`; `sanity` reuses it."""

    trainer: PackedSFTTrainer
    runtime: Runtime
    resume: str | bool | None
    train_dir: Path
    val_dir: Path | None
    metrics: MetricsCallback
    health: HealthCallback


def build_trainer(cfg: RunConfig, callbacks: Sequence[TrainerCallback] = (),
                  train_examples: int | None = None) -> Session:
    """Resolve the runtime, load model and data, build SFTConfig and the trainer.

    Args:
        cfg: the run config.
        callbacks: extra TrainerCallbacks (tests use them to crash or inject faults).
        train_examples: train on the first rows only, enough to hold this many sequences
            (the sanity check); None: every row.

    Raises:
        SftpackError: any config, model or data problem.
    """
    runtime = resolve_runtime(cfg.model)
    logger.info("device %s: %s, %s attention (%s)", runtime.device, runtime.dtype,
                runtime.attn_implementation, runtime.reason)
    args, resume = sft_config(cfg, runtime)
    configure_trackers(dict(cfg.train))
    with args.main_process_first(desc="validate and pack"):  # one process packs, the others reuse
        train_dir, val_dir = prepare_data(cfg)
    model, tokenizer = load_model(cfg.model, runtime)
    train_ds = load_packed(train_dir, tokenizer, "data.train")
    if train_examples is not None:
        train_ds = train_ds.select(range(rows_holding(train_ds, train_examples)))
    eval_ds = load_packed(val_dir, tokenizer, "data.validation") if val_dir else None
    counter = TokenCounter()
    metrics = MetricsCallback(counter)
    health = HealthCallback(cfg=cfg.monitor)
    extra = list(callbacks)
    if cfg.monitor.early_stopping_patience is not None:
        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.monitor.early_stopping_patience))
    trainer = PackedSFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, callbacks=extra, counter=counter, health=health,
    )
    _insert_monitors(trainer, [metrics, health])
    return Session(trainer, runtime, resume, train_dir, val_dir, metrics, health)


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
    started = time.time()
    session = build_trainer(cfg, callbacks)
    trainer = session.trainer
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
    state = trainer.state

    if session.health.stopped_nonfinite:
        status, final = "stopped_nonfinite", None  # NaN weights are not a model
    else:
        max_reached = state.global_step >= state.max_steps
        status = "completed" if max_reached else "early_stopped"
        final = output_dir / FINAL_DIR
        trainer.save_model(str(final))  # the best model when load_best_model_at_end

    samples = [{"prompt": p, "before": b, "after": a} for p, b, a in
               zip(prompts, before, answer_prompts(trainer.model, tokenizer, prompts, sample_tokens))] if final else []
    _finish_wandb()  # flush the offline run: complete on disk and ready for `wandb sync`
    manifest = {
        "sftpack_version": __version__,
        "status": status,
        "resumed_from": resume,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": state.epoch,
        "train_loss": result.training_loss,
        "best_eval_loss": state.best_metric,
        "best_checkpoint": state.best_model_checkpoint,
        "final": str(final) if final else None,
        "nonfinite_saved_to": trainer.nonfinite_saved_to,
        "health_warnings": [dataclasses.asdict(w) for w in session.health.warnings],
        "samples": samples,
        "tokens": {"total": session.metrics.counter.total, "trained": session.metrics.counter.trained},
        "data": {key: _data_identity(path) for key, path in
                 (("train", session.train_dir), ("validation", session.val_dir)) if path},
        "runtime": dataclasses.asdict(session.runtime),
        "distributed": {"world_size": trainer.args.world_size, "parallel_mode": str(trainer.args.parallel_mode.value),
                        "backend": getattr(trainer.args.distributed_state, "backend", None)},
        "versions": _versions(),
        "config": cfg.to_dict(),
        "seconds": round(time.time() - started, 3),
    }
    if trainer.is_world_process_zero():
        from pipeline.atomic import write_json

        write_json(output_dir / RUN_MANIFEST, manifest)
    return manifest


def _finish_wandb() -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _data_identity(folder: Path) -> dict[str, Any]:
    manifest = read_manifest(folder) or {}
    return {"path": str(folder), "fingerprint": manifest.get("fingerprint"), "totals": manifest.get("totals")}


def _versions() -> dict[str, str]:
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__}


def load_run_manifest(output_dir: str | Path) -> dict[str, Any] | None:
    path = Path(output_dir) / RUN_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
