"""Plan a run: starting hyperparameters by model size, batch arithmetic, LR schedules.

    parameters (config.json on the meta device, or --params) ──> size row (SIZE_TABLE)
    flags > base run config `train` > size row ──> learning rate, epochs, warmup, ...
    target effective batch / (per-device x GPUs) ──> gradient accumulation steps
    packed rows (manifest totals.rows or --examples) ──> optimizer steps per epoch, total, warmup

Step counts follow transformers' Trainer exactly (`Trainer.set_initial_training_values`):

    micro-batches per epoch per GPU = ceil(rows / (per_device x gpus))
    optimizer steps per epoch       = max(ceil(micro-batches / accumulation), 1)
    total steps                     = ceil(epochs x steps per epoch)
    warmup steps                    = ceil(total x ratio) for a ratio < 1 (`get_warmup_steps`)

Learning rates per step come from transformers' own `get_scheduler` on a dummy optimizer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import SftpackError

# The keys of `--json`, in order; also the planned values' names everywhere below.
PLAN_KEYS = (
    "learning_rate",
    "effective_batch_size",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_gpus",
    "num_train_epochs",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "optimizer_steps_per_epoch",
    "total_steps",
)

# Schedules drawn by --plot and sampled in the text output (transformers SchedulerType names).
SCHEDULES = ("cosine", "linear", "constant_with_warmup")

# A common starting micro-batch when neither a flag nor the base config gives one; the
# accumulation steps keep the effective batch, so lowering it on out-of-memory is safe.
DEFAULT_PER_DEVICE_BATCH = 4

RULES_OF_THUMB = (
    "start at 2e-5 for 7B and larger, 5e-5 for smaller models",
    "eval loss rises (or spikes) early: cut the learning rate to a half or a third",
    "train and eval loss plateau high: double the learning rate",
    "changing the effective batch by k: scale the learning rate by about sqrt(k) as a first guess",
)


@dataclass(frozen=True)
class SizeRow:
    """One row of starting hyperparameters for full fine-tuning (SFT) of a model size band."""

    label: str
    """Human name of the band, e.g. 7-13B."""
    min_params: float
    """Smallest parameter count of the band (inclusive)."""
    max_params: float
    """Largest parameter count of the band (inclusive)."""
    learning_rate: float
    """Peak learning rate (AdamW)."""
    effective_batch_size: int
    """Sequences (packed rows) per optimizer step across all GPUs."""
    num_train_epochs: int
    """Passes over the training rows."""
    warmup_ratio: float
    """Share of the total steps spent warming up linearly from 0."""
    weight_decay: float
    """AdamW decoupled weight decay."""
    max_grad_norm: float
    """Gradient clipping threshold."""
    lr_scheduler_type: str = "cosine"
    """Decay after warmup (transformers SchedulerType name)."""


# Published full-parameter SFT recipes, rounded to one row per size band:
#   1-3B:   common small-model SFT recipes (e.g. TRL/alignment-handbook style runs on 1-3B
#           models) use a higher peak LR than 7B; 5e-5, batch 32, 3 epochs.
#   7-13B:  Stanford Alpaca (lr 2e-5, batch 128, 3 epochs, warmup 0.03, wd 0, cosine),
#           Vicuna (2e-5, 3 epochs, cosine), Tulu 2 (2e-5 for 7B/13B, warmup 0.03, wd 0).
#   30-70B: Tulu 2 70B (lr 1e-5, batch 128, 2 epochs, warmup 0.03, wd 0), LIMA 65B (1e-5).
# Keep this the only place these numbers live.
SIZE_TABLE: tuple[SizeRow, ...] = (
    SizeRow("1-3B", 1e9, 3e9, learning_rate=5e-5, effective_batch_size=32, num_train_epochs=3,
            warmup_ratio=0.03, weight_decay=0.01, max_grad_norm=1.0),
    SizeRow("7-13B", 7e9, 13e9, learning_rate=2e-5, effective_batch_size=64, num_train_epochs=3,
            warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0),
    SizeRow("30-70B", 30e9, 70e9, learning_rate=1e-5, effective_batch_size=128, num_train_epochs=2,
            warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0),
)


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


@dataclass(frozen=True)
class BatchPlan:
    """Effective batch = per_device x accumulation x gpus."""

    per_device: int
    gpus: int
    accumulation: int
    note: str | None = None

    @property
    def effective(self) -> int:
        return self.per_device * self.accumulation * self.gpus


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
    """Exactly PLAN_KEYS."""
    sources: Mapping[str, str]
    """Planned key -> flag | config | table | computed."""
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


# --- parameter count -------------------------------------------------------------------

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_PARAMS_RE = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)([kmbgt]?)$", re.IGNORECASE)


def parse_params(text: str) -> int:
    """Parse a parameter count: `7e9`, `7B`, `1.5b`, `135M`, `134_515_008`, `134,515,008`.

    Raises:
        SftpackError: not a number with an optional K/M/B/T suffix, or not positive.
    """
    cleaned = str(text).strip().replace("_", "").replace(",", "")
    match = _PARAMS_RE.match(cleaned)
    if not match:
        raise SftpackError(f"--params {text!r}: expected a count like 7e9, 7B, 1.5B or 135M")
    value = round(float(match.group(1)) * _SUFFIX[match.group(2).lower()])
    if value < 1:
        raise SftpackError(f"--params {text!r}: the parameter count must be at least 1")
    return int(value)


def count_parameters(model_dir: str | Path) -> int:
    """Count a model's parameters from its config.json; no weights are read.

    The model is built on the `meta` device (shapes only), so tied embeddings are counted once,
    exactly as `model.num_parameters()` would count the loaded model.

    Raises:
        SftpackError: no config.json, or transformers cannot build the architecture.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise SftpackError(
            f"{model_dir}: no config.json (not a Hugging Face model folder); "
            "give the model folder, or the size with --params (e.g. --params 7B)"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # any failure here means "cannot count from config"
        raise SftpackError(
            f"{model_dir / 'config.json'}: cannot build the model from its config "
            f"({type(err).__name__}: {err}); give the size with --params instead"
        ) from None
    return sum(p.numel() for p in model.parameters())


def pick_row(num_params: int) -> tuple[SizeRow, str | None]:
    """The size row for a parameter count, and a note when it is outside every row.

    Below the first row or above the last, the nearest end row is used; in a gap between
    rows, the nearer on a log scale (sizes are multiplicative).
    """
    billions = num_params / 1e9
    first, last = SIZE_TABLE[0], SIZE_TABLE[-1]
    if num_params < first.min_params:
        return first, (f"{billions:.2f}B parameters is below the table (smallest row {first.label}); "
                       f"using the {first.label} row")
    if num_params > last.max_params:
        return last, (f"{billions:.1f}B parameters is above the table (largest row {last.label}); "
                      f"using the {last.label} row")
    for row in SIZE_TABLE:
        if row.min_params <= num_params <= row.max_params:
            return row, None
    for lower, upper in zip(SIZE_TABLE, SIZE_TABLE[1:]):
        if lower.max_params < num_params < upper.min_params:
            nearer = lower if num_params / lower.max_params <= upper.min_params / num_params else upper
            return nearer, (f"{billions:.1f}B parameters is between the {lower.label} and {upper.label} "
                            f"rows; using the nearer (log scale) {nearer.label} row")
    raise AssertionError("unreachable: SIZE_TABLE rows are sorted and cover their gaps")


# --- batch and step arithmetic ---------------------------------------------------------


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


def sample_steps(plan: Plan) -> list[tuple[str, int]]:
    """(label, step) for the text table: start, warmup end, 25/50/75/100% of the steps."""
    total, warmup = plan.values["total_steps"], plan.values["warmup_steps"]
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


def draw_schedules(plan: Plan):
    """A matplotlib Figure with the LR per step for each of SCHEDULES on the planned run.

    Raises:
        SftpackError: the plan has no step counts (no --examples / --data).
    """
    if plan.values["total_steps"] is None:
        raise SftpackError("--plot needs the number of training rows: give --examples N or --data PACKED_DIR")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    v = plan.values
    steps = plot_steps(v["total_steps"], v["warmup_steps"])
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    for name in SCHEDULES:
        ax.plot(steps, schedule_lrs(name, v["learning_rate"], v["warmup_steps"], v["total_steps"], steps),
                label=name)
    if v["warmup_steps"]:
        ax.axvline(v["warmup_steps"], color="grey", linestyle=":", linewidth=1, label="warmup end")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{plan.num_params / 1e9:.2f}B params, {v['total_steps']} steps, "
                 f"warmup {v['warmup_steps']}, peak {v['learning_rate']:g}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_plot(plan: Plan, path: str | Path) -> None:
    """Draw the schedules and save them as a PNG, atomically."""
    from pipeline.atomic import atomic_file

    fig = draw_schedules(plan)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")


# --- the plan --------------------------------------------------------------------------


def _read_packed_rows(folder: str | Path, what: str) -> tuple[int, int | None]:
    """(totals.rows, options.max_length) of a packed folder's manifest."""
    from pipeline.shards import read_manifest

    manifest = read_manifest(folder)
    if manifest is None:
        raise SftpackError(f"{what} {folder}: no manifest.json (not a packed folder, or unreadable); "
                           "run `sftpack pack` first, or give --examples N")
    try:
        rows = int(manifest["totals"]["rows"])
    except (KeyError, TypeError, ValueError) as err:
        raise SftpackError(f"{Path(folder) / 'manifest.json'}: unreadable manifest (need totals.rows): {err}") from None
    max_length = (manifest.get("options") or {}).get("max_length")
    return rows, int(max_length) if max_length is not None else None


def _positive(name: str, value: Any, errors: list[str], allow_float: bool = False) -> None:
    if value is None:
        return
    kinds = (int, float) if allow_float else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        need = "a positive number" if allow_float else "a positive whole number"
        errors.append(f"{name} {value!r}: must be {need}")


def _check_request(req: PlanRequest) -> None:
    errors: list[str] = []
    if req.model is not None and req.params is not None:
        errors.append("give --model PATH or --params N, not both")
    if req.model is None and req.params is None and req.config is None:
        errors.append("give --model PATH (a folder with config.json) or --params N (e.g. 7B)")
    if req.examples is not None and req.data is not None:
        errors.append("give --examples N or --data PACKED_DIR, not both")
    _positive("--gpus", req.gpus, errors)
    _positive("--per-device-batch", req.per_device_batch, errors)
    _positive("--target-batch", req.target_batch, errors)
    _positive("--examples", req.examples, errors)
    _positive("--epochs", req.epochs, errors, allow_float=True)
    if errors:
        raise SftpackError("; ".join(errors))


def _examples_from_config(cfg) -> tuple[int | None, str, str | None]:
    """Rows from the base config's data.train: a packed folder is exact, raw JSONL an estimate."""
    train = cfg.data.train
    if not train:
        return None, "unknown", "no --examples/--data and data.train is empty: step counts are unknown"
    path = Path(train)
    if path.is_dir():
        rows, _ = _read_packed_rows(path, f"{cfg.source}: data.train")
        return rows, f"{path}/manifest.json", None
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            lines = sum(1 for line in handle if line.strip())
        if lines == 0:
            return None, "unknown", f"{path} (data.train) is empty: step counts are unknown"
        note = (f"rows estimated as the {lines} examples in {path} (data.train, not packed yet); "
                "packing puts several examples per row, so the real step counts are lower: "
                "give --data PACKED_DIR for exact ones")
        if not cfg.data.packing:
            note = f"rows estimated as the {lines} examples in {path} (data.train; packing off: one per row)"
        return lines, f"{path} (estimate)", note
    return None, "unknown", f"data.train {train} not found: step counts are unknown"


def make_plan(req: PlanRequest) -> Plan:
    """Resolve every planned value: flags, then the base config's `train`, then the size row.

    Raises:
        SftpackError: bad or conflicting flags, unreadable model/data/config (all flag
            problems at once).
    """
    _check_request(req)
    base = None
    base_train: Mapping[str, Any] = {}
    if req.config is not None:
        from pipeline.config import load_config

        base = load_config(req.config)
        base_train = base.train
    notes: list[str] = []

    model_path = req.model
    if model_path is None and req.params is None:
        model_path = base.model.name_or_path  # _check_request: no --model/--params means --config
    if req.params is not None:
        num_params, params_from = parse_params(req.params), "--params"
    else:
        num_params, params_from = count_parameters(model_path), f"{model_path}/config.json"
    row, note = pick_row(num_params)
    if note:
        notes.append(note)

    sources: dict[str, str] = {}

    def pick(key: str, flag: Any, table: Any) -> Any:
        if flag is not None:
            sources[key] = "flag"
            return flag
        if key in base_train and base_train[key] is not None:
            sources[key] = "config"
            return base_train[key]
        sources[key] = "table"
        return table

    lr = pick("learning_rate", None, row.learning_rate)
    epochs = pick("num_train_epochs", req.epochs, row.num_train_epochs)
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    warmup = pick("warmup_steps", None, row.warmup_ratio)
    weight_decay = pick("weight_decay", None, row.weight_decay)
    max_grad_norm = pick("max_grad_norm", None, row.max_grad_norm)
    scheduler = pick("lr_scheduler_type", None, row.lr_scheduler_type)
    per_device = pick("per_device_train_batch_size", req.per_device_batch, DEFAULT_PER_DEVICE_BATCH)
    if sources["per_device_train_batch_size"] == "table":
        sources["per_device_train_batch_size"] = "default"

    errors: list[str] = []
    where = base.source if base else "config"
    for key, value in (("learning_rate", lr), ("num_train_epochs", epochs), ("warmup_steps", warmup),
                       ("weight_decay", weight_decay), ("max_grad_norm", max_grad_norm)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            errors.append(f"{where}: train.{key} {value!r} must be a number >= 0")
    for key, value in (("learning_rate", lr), ("num_train_epochs", epochs)):
        if value == 0:
            errors.append(f"{where}: train.{key} must be above 0")
    if isinstance(per_device, bool) or not isinstance(per_device, int) or per_device < 1:
        errors.append(f"{where}: train.per_device_train_batch_size {per_device!r} must be a whole number >= 1")
    base_accumulation = base_train.get("gradient_accumulation_steps")
    if base_accumulation is not None and (isinstance(base_accumulation, bool)
                                          or not isinstance(base_accumulation, int) or base_accumulation < 1):
        errors.append(f"{where}: train.gradient_accumulation_steps {base_accumulation!r} must be a whole number >= 1")
    if errors:
        raise SftpackError("; ".join(errors))

    # The effective batch: --target-batch, else the base config's accumulation, else the row.
    if req.target_batch is not None:
        batch = plan_batch(per_device, req.gpus, target=req.target_batch)
        sources["gradient_accumulation_steps"] = sources["effective_batch_size"] = "flag"
    elif base_accumulation is not None:
        batch = plan_batch(per_device, req.gpus, accumulation=base_accumulation)
        sources["gradient_accumulation_steps"] = sources["effective_batch_size"] = "config"
    else:
        batch = plan_batch(per_device, req.gpus, target=row.effective_batch_size)
        sources["gradient_accumulation_steps"] = sources["effective_batch_size"] = "table"
    if batch.note:
        notes.append(batch.note)

    # Rows: --examples, --data's manifest, else the base config's data.train.
    max_length = base.data.max_length if base else None
    if req.examples is not None:
        examples, examples_from = req.examples, "--examples"
    elif req.data is not None:
        examples, manifest_length = _read_packed_rows(req.data, "--data")
        examples_from = f"{req.data}/manifest.json"
        if base and manifest_length is not None and manifest_length != base.data.max_length:
            notes.append(f"{req.data} was packed with max_length {manifest_length}, the base config says "
                         f"data.max_length {base.data.max_length}")
        max_length = manifest_length if manifest_length is not None else max_length
    elif base is not None:
        examples, examples_from, note = _examples_from_config(base)
        if note:
            notes.append(note)
    else:
        examples, examples_from = None, "unknown"
        notes.append("no --examples or --data: step counts are unknown")

    micro = steps_per_epoch = total = warmup_steps = None
    warmup_ratio = warmup if warmup < 1 else None
    if examples is not None:
        micro = micro_batches_per_epoch(examples, per_device, req.gpus)
        steps_per_epoch = optimizer_steps_per_epoch(micro, batch.accumulation)
        total = total_steps(epochs, steps_per_epoch)
        max_steps = base_train.get("max_steps")
        if isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps > 0:
            total = max_steps
            notes.append(f"train.max_steps={max_steps} in the base config overrides num_train_epochs")
        warmup_steps = warmup_steps_for(warmup, total)
        if warmup >= 1:
            warmup_ratio = warmup_steps / total
        if examples < batch.effective:
            notes.append(f"{examples} rows are fewer than one effective batch ({batch.effective}): each epoch "
                         f"is {steps_per_epoch} optimizer step(s) on fewer rows than the effective batch")
        elif micro % batch.accumulation:
            notes.append(f"{micro} micro-batches per epoch is not a multiple of {batch.accumulation} "
                         f"accumulation steps: the last step of each epoch accumulates "
                         f"{micro % batch.accumulation}")
        if warmup_steps >= total:
            notes.append(f"warmup ({warmup_steps} steps) covers the whole run ({total} steps): "
                         "lower the warmup or train longer")
    elif warmup >= 1:
        warmup_steps = int(warmup)

    values = {
        "learning_rate": float(lr),
        "effective_batch_size": batch.effective,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": batch.accumulation,
        "num_gpus": req.gpus,
        "num_train_epochs": epochs,
        "warmup_ratio": warmup_ratio,
        "warmup_steps": warmup_steps,
        "weight_decay": float(weight_decay),
        "max_grad_norm": float(max_grad_norm),
        "lr_scheduler_type": scheduler,
        "optimizer_steps_per_epoch": steps_per_epoch,
        "total_steps": total,
    }
    sources.update({"num_gpus": "flag" if req.gpus != 1 else "default", "warmup_ratio": sources["warmup_steps"],
                    "optimizer_steps_per_epoch": "computed", "total_steps": "computed"})
    return Plan(
        num_params=num_params, params_from=params_from, row=row, values=values, sources=sources,
        examples=examples, examples_from=examples_from, micro_batches_per_epoch=micro,
        max_length=max_length, notes=tuple(notes), base_config=base, model_path=model_path,
        data_path=req.data, extra_train={"warmup_steps": warmup},
    )


# --- outputs ---------------------------------------------------------------------------


def plan_json(plan: Plan) -> dict[str, Any]:
    """The `--json` object: exactly PLAN_KEYS."""
    return {key: plan.values[key] for key in PLAN_KEYS}


def plan_train_section(plan: Plan) -> dict[str, Any]:
    """The planned values under their TRL SFTConfig names (warmup as a ratio below 1)."""
    v = plan.values
    return {
        "learning_rate": v["learning_rate"],
        "per_device_train_batch_size": v["per_device_train_batch_size"],
        "gradient_accumulation_steps": v["gradient_accumulation_steps"],
        "num_train_epochs": v["num_train_epochs"],
        # transformers 5 has no warmup_ratio: a float below 1 in warmup_steps is the ratio.
        "warmup_steps": plan.extra_train["warmup_steps"],
        "weight_decay": v["weight_decay"],
        "max_grad_norm": v["max_grad_norm"],
        "lr_scheduler_type": v["lr_scheduler_type"],
    }


def plan_config(plan: Plan):
    """The run config: the base config (or a minimal one) with the planned train values.

    Raises:
        SftpackError: no model folder to name, or the result does not validate.
    """
    from pipeline.config import build_config

    if plan.base_config is not None:
        raw = plan.base_config.to_dict()
    else:
        if plan.model_path is None:
            raise SftpackError("--write-config needs a model folder for model.name_or_path: "
                               "give --model PATH or --config BASE.yaml")
        raw = {"model": {"name_or_path": str(plan.model_path)}, "data": {}, "train": {}}
    if plan.model_path is not None:
        raw["model"]["name_or_path"] = str(plan.model_path)
    if plan.data_path is not None:
        raw["data"]["train"] = str(plan.data_path)
    if not raw["data"].get("train"):
        # The train stage needs it, and write_config would save `train: null`, which the
        # schema (a string) rejects on load.
        raise SftpackError("--write-config needs the training data for data.train: "
                           "give --data PACKED_DIR, or --config BASE.yaml with data.train set")
    raw["train"] = {**raw.get("train", {}), **plan_train_section(plan)}
    return build_config(raw, source="sftpack plan --write-config")


def _fmt(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_plan(plan: Plan) -> str:
    """The human-readable plan: values with their source, arithmetic, notes, rules, samples."""
    v, row = plan.values, plan.row
    lines = [f"model: {plan.num_params:,} parameters ({plan.num_params / 1e9:.2f}B) from {plan.params_from}",
             f"size row: {row.label}", "", f"  {'value':<29}{'planned':>12}  {'from':<9}{'table':>9}"]
    table = {"learning_rate": row.learning_rate, "effective_batch_size": row.effective_batch_size,
             "num_train_epochs": row.num_train_epochs, "warmup_ratio": row.warmup_ratio,
             "weight_decay": row.weight_decay, "max_grad_norm": row.max_grad_norm,
             "lr_scheduler_type": row.lr_scheduler_type}
    for key in PLAN_KEYS:
        lines.append(f"  {key:<29}{_fmt(v[key]):>12}  {plan.sources.get(key, ''):<9}"
                     f"{_fmt(table[key]) if key in table else '':>9}")
    b, g, a = v["per_device_train_batch_size"], v["num_gpus"], v["gradient_accumulation_steps"]
    lines += ["", f"batch: {b} per device x {a} accumulation x {g} GPU(s) = {v['effective_batch_size']} "
                  "rows per optimizer step"]
    if plan.examples is not None:
        lines.append(f"rows: {plan.examples:,} from {plan.examples_from}")
        if plan.max_length:
            lines.append(f"tokens per optimizer step: at most {v['effective_batch_size'] * plan.max_length:,} "
                         f"({v['effective_batch_size']} rows x max_length {plan.max_length})")
        lines.append(f"steps: ceil({plan.examples} / ({b} x {g})) = {plan.micro_batches_per_epoch} micro-batches "
                     f"per GPU per epoch -> ceil(/{a}) = {v['optimizer_steps_per_epoch']} optimizer steps per epoch"
                     f" -> {v['total_steps']} total over {_fmt(v['num_train_epochs'])} epoch(s)")
        lines.append(f"warmup: {v['warmup_steps']} steps (ratio {_fmt(v['warmup_ratio'])}, rounded up)")
    else:
        lines.append("steps: unknown (give --examples N or --data PACKED_DIR)")
    if plan.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in plan.notes]
    lines += ["", "rules of thumb:"] + [f"  - {rule}" for rule in RULES_OF_THUMB]
    if v["total_steps"] is not None:
        points = sample_steps(plan)
        steps = [step for _, step in points]
        curves = {name: schedule_lrs(name, v["learning_rate"], v["warmup_steps"], v["total_steps"], steps)
                  for name in SCHEDULES}
        lines += ["", "learning rate at sample points (transformers get_scheduler):",
                  f"  {'point':<12}{'step':>7}" + "".join(f"{name:>22}" for name in SCHEDULES)]
        for i, (label, step) in enumerate(points):
            lines.append(f"  {label:<12}{step:>7}" + "".join(f"{curves[name][i]:>22.3e}" for name in SCHEDULES))
    return "\n".join(lines)
