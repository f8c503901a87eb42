"""Training monitors: derived metrics and health warnings, sent to every tracker.

Both callbacks work by adding keys to the `logs` dict of `Trainer.log`, so whatever trackers
`train.report_to` names (TensorBoard, W&B, ...) receive the same values. They must therefore
run *before* the tracker callbacks; `sftpack.training.trainer` inserts them right after
`DefaultFlowCallback`. Trackers rename keys (`rewrite_logs`): `eval_*` -> `eval/*`, everything
else -> `train/*`, so `trained_tokens_per_second` shows as `train/trained_tokens_per_second`.

    per step:   on_step_begin/on_step_end time the optimizer steps (eval and saving excluded)
    per log:    MetricsCallback   tokens/s (trained, total), memory, train/eval gap, overfit flag
                HealthCallback    NaN/inf, loss spike, grad norm, eval rising, throughput, memory
    at the end: MetricsCallback   summary (steps, best eval loss, epochs) into logs + W&B summary
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from sftpack.config.run_config import MonitorConfig

logger = logging.getLogger("sftpack.monitor")

# Advice given with the "eval loss rising while train loss falls" warning.
OVERFIT_ADVICE = "reduce the learning rate 2-3x, train fewer epochs, or raise weight_decay"
# How many recent train losses a spike is compared with, and how many logs memory must grow.
SPIKE_WINDOW = 5
MEMORY_WINDOW = 5
MEMORY_GROWTH = 1.10  # total growth over the window that counts as a leak, not allocator warm-up


@dataclass
class TokenCounter:
    """Tokens seen by training, summed over all processes (filled by `PackedSFTTrainer`)."""

    total: int = 0
    """Every input token, packed rows concatenated."""
    trained: int = 0
    """Tokens with a label (loss computed on them)."""


def memory_metrics() -> dict[str, float]:
    """GPU allocated/reserved/peak (MB) on CUDA; the process resident set (MB) otherwise."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mb = 1024**2
        return {
            "memory_allocated_mb": torch.cuda.memory_allocated() / mb,
            "memory_reserved_mb": torch.cuda.memory_reserved() / mb,
            "memory_peak_allocated_mb": torch.cuda.max_memory_allocated() / mb,
        }
    import psutil

    return {"memory_rss_mb": psutil.Process(os.getpid()).memory_info().rss / 1024**2}


def _tracked_memory(logs: dict[str, Any]) -> float | None:
    return logs.get("memory_allocated_mb", logs.get("memory_rss_mb"))


class MetricsCallback(TrainerCallback):
    """Adds throughput, memory, the train/eval gap, an overfitting flag and a final summary.

    Keys added to train logs: `tokens_per_second`, `trained_tokens_per_second`, memory keys
    (see `memory_metrics`). To eval logs: `eval_train_gap` (eval loss minus the mean train
    loss since the previous evaluation) and `eval_overfitting` (1.0 when eval loss rose while
    train loss fell). To the final log: `summary_steps`, `summary_epochs`,
    `summary_best_eval_loss`.
    """

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.busy_seconds = 0.0  # time inside optimizer steps since the last train log
        self._step_started: float | None = None
        self._last_total = 0
        self._last_trained = 0
        self._train_losses: list[float] = []  # train losses since the last evaluation
        self._previous_eval: tuple[float, float] | None = None  # (eval loss, mean train loss)
        self.summary: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_total, self._last_trained = self.counter.total, self.counter.trained

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_started is not None:
            self.busy_seconds += time.perf_counter() - self._step_started
            self._step_started = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs):
        if logs is None:
            return
        if "loss" in logs:
            self._on_train_log(logs)
        if "eval_loss" in logs:
            self._on_eval_log(logs)
        if "train_runtime" in logs:
            self._on_final_log(state, logs)

    def _on_train_log(self, logs: dict[str, Any]) -> None:
        if self.busy_seconds > 0:
            logs["tokens_per_second"] = (self.counter.total - self._last_total) / self.busy_seconds
            logs["trained_tokens_per_second"] = (self.counter.trained - self._last_trained) / self.busy_seconds
        self._last_total, self._last_trained = self.counter.total, self.counter.trained
        self.busy_seconds = 0.0
        logs.update(memory_metrics())
        if math.isfinite(logs["loss"]):
            self._train_losses.append(float(logs["loss"]))

    def _on_eval_log(self, logs: dict[str, Any]) -> None:
        if not self._train_losses:
            return
        train_loss = statistics.fmean(self._train_losses)
        eval_loss = float(logs["eval_loss"])
        logs["eval_train_gap"] = eval_loss - train_loss
        rising = (
            self._previous_eval is not None
            and eval_loss > self._previous_eval[0]
            and train_loss < self._previous_eval[1]
        )
        logs["eval_overfitting"] = 1.0 if rising else 0.0
        self._previous_eval = (eval_loss, train_loss)
        self._train_losses = []

    def _on_final_log(self, state: TrainerState, logs: dict[str, Any]) -> None:
        self.summary = {
            "summary_steps": state.global_step,
            "summary_epochs": float(state.epoch or 0.0),
        }
        if state.best_metric is not None:
            self.summary["summary_best_eval_loss"] = float(state.best_metric)
        logs.update(self.summary)
        if state.is_world_process_zero:
            import sys

            wandb = sys.modules.get("wandb")  # only when the W&B tracker is in use
            if wandb is not None and getattr(wandb, "run", None) is not None:
                wandb.run.summary.update(self.summary)


@dataclass
class HealthWarning:
    step: int
    kind: str
    message: str


@dataclass
class HealthCallback(TrainerCallback):
    """Watches for the warning signs of a bad run; warns in the log and in every tracker.

    Each warning is logged at WARNING level on its own line (the full text), kept in `warnings`,
    and added to the logs as `health_<kind>` = 1.0 plus `health_warning`, the kinds as a short
    code (`grad_norm_high`; the Trainer prints its log dict on one line). A non-finite training loss (reported by the trainer through
    `nonfinite_loss`) stops training at the end of that step, without evaluating or saving
    a checkpoint of the broken weights.

    Kinds: nonfinite_loss, loss_spike, grad_norm_high, grad_norm_low, eval_rising,
    throughput_drop, memory_growth.
    """

    cfg: MonitorConfig = field(default_factory=MonitorConfig)
    warnings: list[HealthWarning] = field(default_factory=list)
    stopped_nonfinite: bool = False
    _pending: list[HealthWarning] = field(default_factory=list)
    _losses: list[float] = field(default_factory=list)
    _throughputs: list[float] = field(default_factory=list)
    _memory: list[float] = field(default_factory=list)
    _evals: list[tuple[float, float]] = field(default_factory=list)  # (eval loss, recent train loss)

    def warn(self, step: int, kind: str, message: str) -> None:
        """Record a warning now; it reaches the trackers with the next log."""
        item = HealthWarning(step, kind, message)
        logger.warning("step %d: %s", step, message)
        self.warnings.append(item)
        self._pending.append(item)

    def nonfinite_loss(self, step: int, value: float, saved_to: str | None) -> None:
        """Called by the trainer when a training step's loss is NaN or inf (all processes agree)."""
        where = f"; the weights that produced it are saved in {saved_to}" if saved_to else ""
        self.warn(step, "nonfinite_loss",
                  f"training loss is {value} at step {step}: training stopped{where}. Lower "
                  f"learning_rate, check max_grad_norm, or use float32/bf16 instead of fp16.")
        self.stopped_nonfinite = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_nonfinite:
            control.should_training_stop = True
            control.should_save = False  # a checkpoint of NaN weights would become "last"
            control.should_evaluate = False
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        step = state.global_step
        if "loss" in logs:
            self._check_train(step, logs, getattr(args, "max_grad_norm", None))
        if "eval_loss" in logs:
            self._check_eval(step, logs)
        if self._pending:
            logs["health_warning"] = ", ".join(dict.fromkeys(w.kind for w in self._pending))
            for item in self._pending:
                logs[f"health_{item.kind}"] = 1.0
            self._pending = []

    def _check_train(self, step: int, logs: dict[str, Any], max_grad_norm: float | None) -> None:
        cfg = self.cfg
        loss = float(logs["loss"])
        if not math.isfinite(loss) and not self.stopped_nonfinite:
            self.warn(step, "nonfinite_loss", f"logged training loss is {loss}")
        elif math.isfinite(loss):
            recent = self._losses[-SPIKE_WINDOW:]
            if len(recent) >= 3 and loss > cfg.loss_spike_factor * statistics.fmean(recent):
                self.warn(step, "loss_spike",
                          f"loss spike: {loss:.4g} > {cfg.loss_spike_factor}x the recent mean "
                          f"{statistics.fmean(recent):.4g}; check the data around this step or lower the learning rate")
            self._losses.append(loss)
        self._check_grad_norm(step, logs.get("grad_norm"), max_grad_norm)
        throughput = logs.get("tokens_per_second")
        if throughput is not None:
            if len(self._throughputs) >= 3:
                median = statistics.median(self._throughputs)
                if throughput < cfg.throughput_drop_factor * median:
                    self.warn(step, "throughput_drop",
                              f"throughput dropped to {throughput:.0f} tokens/s, below "
                              f"{cfg.throughput_drop_factor}x the median {median:.0f}; another process on the "
                              f"device, swapping, or thermal throttling?")
            self._throughputs.append(throughput)
        memory = _tracked_memory(logs)
        if memory is not None:
            self._memory.append(memory)
            window = self._memory[-(MEMORY_WINDOW + 1):]
            growing = len(window) == MEMORY_WINDOW + 1 and all(b > a for a, b in zip(window, window[1:]))
            if growing and window[-1] > MEMORY_GROWTH * window[0]:
                self.warn(step, "memory_growth",
                          f"memory grew at each of the last {MEMORY_WINDOW} logs ({window[0]:.0f} -> "
                          f"{window[-1]:.0f} MB): a leak (tensors kept across steps?) will end in out-of-memory")

    def _check_grad_norm(self, step: int, grad_norm: float | None, max_grad_norm: float | None) -> None:
        """The Trainer logs the norm before clipping: with max_grad_norm set, the update was clipped."""
        cfg = self.cfg
        if grad_norm is None or not math.isfinite(grad_norm):
            return
        if grad_norm > cfg.grad_norm_high:
            said = f"grad norm {grad_norm:.4g} > monitor.grad_norm_high {cfg.grad_norm_high}"
            if max_grad_norm:
                self.warn(step, "grad_norm_high", f"{said} before clipping (max_grad_norm {max_grad_norm} clips the "
                          "update): if it stays this high, lower the learning rate or look for outlier examples")
            else:
                self.warn(step, "grad_norm_high", f"{said} and no clipping (max_grad_norm {max_grad_norm}): exploding "
                          "gradients; set max_grad_norm (e.g. 1.0) or lower the learning rate")
        elif grad_norm < cfg.grad_norm_low:
            self.warn(step, "grad_norm_low",
                      f"grad norm {grad_norm:.3g} < monitor.grad_norm_low {cfg.grad_norm_low}: vanishing "
                      f"gradients; check the labels (all -100?) and the learning rate")

    def _check_eval(self, step: int, logs: dict[str, Any]) -> None:
        eval_loss = float(logs["eval_loss"])
        train_loss = self._losses[-1] if self._losses else math.nan
        if self._evals:
            previous_eval, previous_train = self._evals[-1]
            if eval_loss > previous_eval and train_loss < previous_train:
                self.warn(step, "eval_rising",
                          f"eval loss rose ({previous_eval:.4g} -> {eval_loss:.4g}) while train loss fell "
                          f"({previous_train:.4g} -> {train_loss:.4g}): overfitting; {OVERFIT_ADVICE}")
        self._evals.append((eval_loss, train_loss))
