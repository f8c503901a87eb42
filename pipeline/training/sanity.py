"""The sanity check: a short real training run that shows the setup learns.

    run config ──prepare_data──> packed train (first rows holding `examples` sequences)
                                 + one held-out prompt (validation, else a later train row)
    greedy answer before ──train `steps` steps, log every step──> greedy answer after
    report: trained spans marked [[...]], loss trajectory PASS/FAIL, peak memory, answers

Training settings come from the config's `train` section with these replaced: max_steps,
logging every step, no evaluation, no checkpoints, no trackers, output_dir/sanity (or
`SanityConfig.out_dir`, which `make sanity` sets so make sees sanity.json).
"""

from __future__ import annotations

import dataclasses
import math
import resource
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sftpack.store.atomic import atomic_file, write_json
from sftpack.config.run_config import RunConfig
from sftpack.errors import SftpackError
from sftpack.training.generation import greedy
from sftpack.training.isolation import describe
from sftpack.templates.trained_text import mark_trained
from sftpack.templates.masking import IGNORE_INDEX

# "Decreased": the mean of the last ENDS losses is at least MIN_DECREASE below the median of
# the first ENDS (a median, so one early spike cannot fake a decrease).
ENDS = 3
MIN_DECREASE = 0.01


@dataclass(frozen=True)
class SanityConfig:
    steps: int = 15
    """Optimizer steps (10-20 shows a trend in a minute or two)."""
    examples: int = 64
    """Conversations trained on (the first packed rows holding at least this many)."""
    samples: int = 2
    """Training sequences printed with their trained spans marked."""
    max_new_tokens: int = 40
    """Length of the greedy answers to the held-out prompt."""
    out_dir: str | None = None
    """Where the short run and its sanity.{txt,json} go; None: the config's train.output_dir/sanity."""

    def __post_init__(self) -> None:
        problems = []
        if not 2 * ENDS <= self.steps <= 200:
            problems.append(f"steps {self.steps}: expected {2 * ENDS}..200")
        if self.examples < 1 or self.samples < 0 or self.max_new_tokens < 1:
            problems.append("examples and max_new_tokens must be positive, samples 0 or more")
        if problems:
            raise SftpackError("options: " + "; ".join(problems))


def split_sequences(row: dict[str, list[int]]) -> list[tuple[list[int], list[int]]]:
    """A packed row -> its (input_ids, labels) sequences, by seq_lengths."""
    out, start = [], 0
    for length in row["seq_lengths"]:
        out.append((row["input_ids"][start:start + length], row["labels"][start:start + length]))
        start += length
    return out


def held_out_prompt(sequence: tuple[list[int], list[int]]) -> list[int]:
    """The prompt of a sequence: every token before its first trained token."""
    ids, labels = sequence
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    return ids[:first]


def peak_memory_mb() -> dict[str, float]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"gpu_peak_allocated_mb": torch.cuda.max_memory_allocated() / 1024**2}
    return {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KB on Linux


def loss_verdict(losses: list[float]) -> tuple[str, str]:
    """PASS when every loss is finite and the loss decreased (see MIN_DECREASE); else FAIL."""
    if not losses:
        return "FAIL", "no loss was logged"
    if not all(math.isfinite(x) for x in losses):
        return "FAIL", "the loss went non-finite (NaN/inf): lower the learning rate"
    if len(losses) < 2 * ENDS:
        return "FAIL", f"only {len(losses)} losses logged; need {2 * ENDS}"
    first, last = statistics.median(losses[:ENDS]), statistics.fmean(losses[-ENDS:])
    change = f"median of first {ENDS} {first:.4f} -> mean of last {ENDS} {last:.4f}"
    if last < (1 - MIN_DECREASE) * first:
        return "PASS", f"loss decreased: {change}"
    return "FAIL", (f"loss did not decrease by {MIN_DECREASE:.0%}: {change}; check the trained spans "
                    f"(samples above) and the learning rate (too low: flat; too high: spikes, then flat)")


def sanity_run_config(cfg: RunConfig, scfg: SanityConfig) -> RunConfig:
    """The run config of the short run (see the module docstring)."""
    train = dict(cfg.train)
    for key in ("load_best_model_at_end", "metric_for_best_model", "greater_is_better", "eval_steps",
                "save_steps", "save_total_limit", "resume_from_checkpoint", "num_train_epochs"):
        train.pop(key, None)
    train.update(
        output_dir=scfg.out_dir or str(Path(train.get("output_dir", "out/runs/run")) / "sanity"),
        max_steps=scfg.steps, logging_steps=1, eval_strategy="no", save_strategy="no",
        report_to="none", logging_first_step=True,
    )
    return dataclasses.replace(cfg, train=train, data=dataclasses.replace(cfg.data, validation=None),
                               monitor=dataclasses.replace(cfg.monitor, early_stopping_patience=None))


def run(cfg: RunConfig, scfg: SanityConfig = SanityConfig()) -> dict[str, Any]:
    """Train briefly and report; see the module docstring.

    Returns:
        The report (also written as sanity.json and sanity.txt in the run's output_dir, see
        `sanity_run_config`): `passed`, `verdict`, `losses`, `samples`, `prompt`,
        `answer_before`, `answer_after`, memory, `files` (the two paths, on the process that wrote them).

    Raises:
        SftpackError: config, model or data problems.
    """
    from sftpack.training.adapters import check_quantization
    from sftpack.training.data import prepare_data
    from sftpack.training.trainer import build_trainer

    check_quantization(cfg.model.quantization)  # before any work
    train_dir, val_dir = prepare_data(cfg)
    if isinstance(val_dir, dict):  # a recipe's eval splits: the first source's gives the held-out prompt
        val_dir = next(iter(val_dir.values()))
    # Prepared once, through train's one path and reject policy: the trainer gets the packed folder.
    prepared = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, train=str(train_dir), recipe=None, validation=str(val_dir) if val_dir else None))
    session = build_trainer(sanity_run_config(prepared, scfg), train_examples=scfg.examples)
    trainer, tokenizer = session.trainer, session.trainer.processing_class
    prompt = _held_out(train_dir, val_dir, tokenizer, scfg.examples)
    samples = _samples(trainer.train_dataset, tokenizer, scfg.samples)

    before = greedy(trainer.model, tokenizer, prompt, scfg.max_new_tokens)
    trainer.train()
    after = greedy(trainer.model, tokenizer, prompt, scfg.max_new_tokens)

    report = _report(session, samples, tokenizer.decode(prompt), before, after)
    if trainer.is_world_process_zero():
        out = Path(trainer.args.output_dir)
        report["files"] = [str(out / "sanity.txt"), str(out / "sanity.json")]
        _write_report(report, out)
    return report


def _held_out(train_dir: Path, val_dir: Path | None, tokenizer, examples: int) -> list[int]:
    """The held-out prompt: the first validation sequence's, else the first row's after the subset."""
    from sftpack.training.data import load_packed, rows_holding

    if val_dir is not None:
        held = load_packed(val_dir, tokenizer, "data.validation")[0]
    else:
        full = load_packed(train_dir, tokenizer, "data.train")
        after = rows_holding(full, examples)
        held = full[after] if after < len(full) else full[0]
    return held_out_prompt(split_sequences(held)[0])


def _samples(train_ds, tokenizer, count: int) -> list[str]:
    """The first `count` training sequences with their trained spans marked [[...]]."""
    samples: list[str] = []
    for row in train_ds:
        for sequence in split_sequences(row):
            if len(samples) == count:
                return samples
            samples.append(mark_trained(tokenizer, *sequence, color=False))
    return samples


def _report(session, samples: list[str], prompt: str, before: str, after: str) -> dict[str, Any]:
    """The report of a finished short run (keys: see `run`)."""
    trainer = session.trainer
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if session.health.stopped_nonfinite:
        losses.append(math.nan)
    verdict, reason = loss_verdict(losses)
    return {
        "passed": verdict == "PASS",
        "verdict": verdict,
        "reason": reason,
        "steps": trainer.state.global_step,
        "rows": len(trainer.train_dataset),
        "examples": sum(len(row) for row in trainer.train_dataset["seq_lengths"]),
        "losses": losses,
        "memory": peak_memory_mb(),
        "runtime": dataclasses.asdict(session.runtime),
        "isolation": describe(session.isolation),
        "samples": samples,
        "prompt": prompt,
        "answer_before": before,
        "answer_after": after,
        "health_warnings": [dataclasses.asdict(w) for w in session.health.warnings],
    }


def _write_report(report: dict[str, Any], out: Path) -> None:
    """sanity.txt, then sanity.json last: a make target on the JSON sees both complete."""
    with atomic_file(out / "sanity.txt", "w", encoding="utf-8") as handle:
        handle.write(format_report(report))
    write_json(out / "sanity.json", report)


def format_report(report: dict[str, Any]) -> str:
    """The report as text for the terminal."""
    lines = [f"sanity check: {report['steps']} steps on {report['examples']} examples ({report['rows']} rows), "
             f"{report['runtime']['device']}, {report['runtime']['dtype']}, {report['runtime']['attn_implementation']}"]
    isolation = report.get("isolation")
    if isolation:
        lines.append(f"rows: {'packed, kept apart by ' + isolation['route'] if isolation['route'] != 'unpacked' else 'UNPACKED, one sequence per batch row'}"
                     f" ({isolation['reason']})")
    lines += ["", "training samples (trained tokens in [[...]]):"]
    for i, sample in enumerate(report["samples"], 1):
        lines += [f"--- sample {i}", sample]
    losses = " ".join(f"{x:.3f}" for x in report["losses"])
    lines += ["", f"loss per step: {losses}", f"{report['verdict']}: {report['reason']}"]
    lines += ["peak memory: " + ", ".join(f"{k} {v:.0f}" for k, v in report["memory"].items())]
    lines += ["", "held-out prompt:", report["prompt"],  # answers quoted: whitespace-only is a finding
              f"greedy answer before training: {report['answer_before']!r}",
              f"greedy answer after training:  {report['answer_after']!r}"]
    for warning in report["health_warnings"]:
        lines.append(f"WARN step {warning['step']}: {warning['message']}")
    return "\n".join(lines) + "\n"
