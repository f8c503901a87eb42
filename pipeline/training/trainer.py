"""The trainer: TRL's SFTTrainer with token counting and a stop on non-finite loss, built for a run.

    Runtime (train.runtime) + Isolation (train.isolation: packed rows apart, or unpacked)
        + SFTConfig (train.args) + packed data and its collator (train.data)
        ──build_trainer──> Session: PackedSFTTrainer (+ MetricsCallback, HealthCallback), what it was built from

`train.run` trains a Session to the end; `sanity` trains one briefly.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from transformers import DefaultFlowCallback, EarlyStoppingCallback, TrainerCallback
from trl import SFTTrainer

from sftpack.config.run_config import RunConfig
from sftpack.training.monitoring import HealthCallback, MetricsCallback, TokenCounter
from sftpack.templates.masking import IGNORE_INDEX
from sftpack.training.adapters import apply_adapter, check_quantization
from sftpack.training.args import sft_config
from sftpack.training import isolation as isolation_probe
from sftpack.training.data import (PositionIdsCollator, UnpackedCollator, load_packed, prepare_data, rows_holding,
                                   unpacked_cost)
from sftpack.training.isolation import Isolation
from sftpack.training.runtime import Runtime, load_model, resolve_runtime

logger = logging.getLogger("sftpack.train")


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

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Per-source eval sets (a recipe's eval/<source>): `eval_<source>_loss` each, plus `eval_loss`,
        all as a mean per trained token, logged together and handed to the callbacks once, so early
        stopping and the best checkpoint see the overall loss (or the source the config names in
        train.metric_for_best_model). `eval_loss` is then what one evaluation of all the sets together
        gives in a single batch, whatever per_device_eval_batch_size is. Transformers' own dict handling
        calls the callbacks per set, each without the other sets' metrics and with no overall loss,
        and its loss is a mean of batch means: batches of few trained tokens weigh as much as full ones."""
        datasets = self.eval_dataset if eval_dataset is None else eval_dataset
        if not isinstance(datasets, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        model = self._wrap_model(self.model, training=False)
        model.eval()
        metrics, sums = {}, {}
        for name, dataset in datasets.items():
            summed = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # (loss * tokens, tokens)
            for inputs in self.get_eval_dataloader(dataset):
                loss, _, _ = self.prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
                # The batch's loss is its mean over the targets the shifted labels hold.
                tokens = (inputs["labels"][..., 1:] != IGNORE_INDEX).sum().to(summed.device).double()
                summed += torch.stack([loss.to(summed.device).double() * tokens, tokens])
            # With several processes accelerate repeats a few rows to even out the last batch, as in
            # transformers' own loop; their tokens count twice.
            sums[name] = self.accelerator.reduce(summed, "sum").tolist()
            metrics[f"{metric_key_prefix}_{name}_loss"] = sums[name][0] / max(sums[name][1], 1)
        total = [sum(values) for values in zip(*sums.values())]
        metrics[f"{metric_key_prefix}_loss"] = total[0] / max(total[1], 1)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            # labels are already -100 at each sequence start (collator), so this counts targets;
            # unpacked rows count their real tokens, not the padding.
            mask = inputs.get("attention_mask")
            local = torch.stack([
                mask.sum() if mask is not None else torch.tensor(inputs["input_ids"].numel(), device=inputs["labels"].device),
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


class PackedRowsNoise(logging.Filter):
    """Drops library warnings that are wrong for packed rows, and only those:

    - TRL's "per_device_train_batch_size of 1 ... annihilate the benefits of padding-free
      training": a packed row already holds many sequences, so a batch of one row is full;
    - transformers' "missing keys in the checkpoint model loaded" when every missing key is a
      tied parameter (lm_head.weight of a tied-embedding model), which tie_weights restores.
    """

    def __init__(self, tied: set[str]):
        super().__init__()
        self.tied = tied

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "annihilate the benefits of padding-free" in message:
            return False
        if message.startswith("There were missing keys in the checkpoint model loaded:"):
            missing = set(re.findall(r"'([^']+)'", message))
            return not (missing and missing <= self.tied)
        return True


def tied_parameters(model) -> set[str]:
    """Names of the parameters that share their storage with an earlier one (tied weights)."""
    first: dict[int, str] = {}
    tied = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if first.setdefault(parameter.data_ptr(), name) != name:
            tied.add(name)
    return tied


def quiet_library_noise(model) -> None:
    """Attach PackedRowsNoise to the loggers that emit those warnings (once per logger)."""
    noise = PackedRowsNoise(tied_parameters(model))
    for name in ("trl.trainer.sft_trainer", "transformers.trainer"):
        library_logger = logging.getLogger(name)
        for old in [f for f in library_logger.filters if isinstance(f, PackedRowsNoise)]:
            library_logger.removeFilter(old)
        library_logger.addFilter(noise)


def _insert_monitors(trainer, monitors: Sequence[TrainerCallback]) -> None:
    """Put monitors after DefaultFlowCallback (so their control changes win) and before the
    trackers (so the keys they add to `logs` reach TensorBoard and W&B)."""
    callbacks = trainer.callback_handler.callbacks
    position = max((i + 1 for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)), default=0)
    for offset, monitor in enumerate(monitors):
        callbacks.insert(position + offset, monitor)


@contextmanager
def tracker_settings(train: dict[str, Any]) -> Iterator[None]:
    """W&B offline when no API key is set, its files beside the run unless WANDB_DIR is set, for this
    run only: afterwards the environment is as it was and W&B's process-wide settings are dropped,
    so the next run in this process (sftpack.train called twice) writes to its own folder."""
    report_to = train.get("report_to") or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    if "wandb" not in report_to and "all" not in report_to:
        yield
        return
    env = {}
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        env["WANDB_MODE"] = "offline"
        logger.info("WANDB_API_KEY unset: W&B runs offline; upload later with `wandb sync %s/wandb/offline-run-*`",
                    train.get("output_dir"))
    if not os.environ.get("WANDB_DIR"):
        env["WANDB_DIR"] = str(train.get("output_dir", "."))
    if train.get("run_name") and not os.environ.get("WANDB_NAME"):
        env["WANDB_NAME"] = str(train["run_name"])
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()
        if wandb is not None and "WANDB_DIR" in env:  # W&B keeps the folder it first saw: drop its settings
            wandb.teardown()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value  # "" set by the user stays ""


@dataclass
class Session:
    """Everything a run needs, built by `build_trainer`; `sanity` reuses it."""

    trainer: PackedSFTTrainer
    runtime: Runtime
    resume: str | bool | None
    train_dir: Path
    val_dir: Path | dict[str, Path] | None
    metrics: MetricsCallback
    health: HealthCallback
    isolation: Isolation | None = None
    """How packed rows are kept apart (training.isolation); None when the model config was unreadable."""


def _eval_data(val_dir: Path | dict[str, Path] | None, tokenizer) -> Any:
    """The eval dataset, or a dict of them (one per recipe source)."""
    if not isinstance(val_dir, dict):
        return load_packed(val_dir, tokenizer, "data.validation") if val_dir else None
    return {name: load_packed(path, tokenizer, f"data.recipe eval/{name}") for name, path in val_dir.items()}


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
    check_quantization(cfg.model.quantization)  # before any work
    runtime = resolve_runtime(cfg.model)
    logger.info("device %s: %s, %s attention (%s)", runtime.device, runtime.dtype,
                runtime.attn_implementation, runtime.reason)
    # Before any data work: `data.packing_isolation: require` refuses here.
    isolation = isolation_probe.for_run(cfg.model.name_or_path, cfg.data.packing_isolation, runtime)
    feed = isolation.feed if isolation else "trl"
    args, resume = sft_config(cfg, runtime, padding_free=feed == "trl")
    with args.main_process_first(desc="validate and pack"):  # one process packs, the others reuse
        train_dir, val_dir = prepare_data(cfg)
    model, tokenizer = load_model(cfg.model, runtime)
    model = apply_adapter(model, tokenizer, cfg.peft, bool(args.activation_checkpointing), args.seed)
    quiet_library_noise(model)
    train_ds = load_packed(train_dir, tokenizer, "data.train")
    if train_examples is not None:
        train_ds = train_ds.select(range(rows_holding(train_ds, train_examples)))
    eval_ds = _eval_data(val_dir, tokenizer)
    collator = {"trl": None, "position_ids": PositionIdsCollator, None: UnpackedCollator}[feed]
    if collator is not None:
        collator = collator(pad_token_id=tokenizer.pad_token_id)
    isolation_probe.announce(isolation, unpacked_cost(train_ds, args.per_device_train_batch_size)
                             if feed is None else None)
    counter = TokenCounter()
    metrics = MetricsCallback(counter)
    health = HealthCallback(cfg=cfg.monitor)
    extra = list(callbacks)
    if cfg.monitor.early_stopping_patience is not None:
        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.monitor.early_stopping_patience))
    trainer = PackedSFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=tokenizer, callbacks=extra, counter=counter, health=health,
    )
    _insert_monitors(trainer, [metrics, health])
    return Session(trainer, runtime, resume, train_dir, val_dir, metrics, health, isolation)
