"""What `sftpack plan` writes: the text table, the `--json` object, the run config, the LR plot.

Every function here reads a finished `Plan` (pipeline/planning/stage.py) and computes nothing new,
except the learning rates at the sampled and drawn steps (pipeline/planning/arithmetic.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftpack.errors import SftpackError
from sftpack.planning.arithmetic import plot_steps, sample_steps, schedule_lrs
from sftpack.planning.table import RULES_OF_THUMB

if TYPE_CHECKING:  # pipeline/planning/stage.py imports this module to write its outputs
    from sftpack.config.run_config import RunConfig
    from sftpack.planning.request import Plan

# The keys of `--json`, in order; also the planned values' names everywhere (Plan.values).
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
    "lora_learning_rate",
    "memory_gib",
    "memory_gib_checkpointing",
    "method",
)

# Schedules drawn by --plot and sampled in the text output (transformers SchedulerType names).
SCHEDULES = ("cosine", "linear", "constant_with_warmup")


# --- JSON and run config ---------------------------------------------------------------


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


def plan_config(plan: Plan) -> RunConfig:
    """The run config: the base config (or a minimal one) with the planned train values.

    Raises:
        SftpackError: no model folder to name, or the result does not validate.
    """
    from sftpack.config.run_config import build_config

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
    raw.update(_method_sections(plan, raw))
    return build_config(raw, source="sftpack plan --write-config")


def _method_sections(plan: Plan, raw: dict[str, Any]) -> dict[str, Any]:
    """The `peft` section (and model.quantization, checkpointing) for a lora or qlora plan."""
    from sftpack.planning.table import LORA_RANK

    method, memory = plan.values["method"], plan.memory
    if memory.get("checkpointing"):
        raw["train"]["gradient_checkpointing"] = True
    if method not in ("lora", "qlora"):
        return {}
    peft = dict(raw.get("peft") or {"r": LORA_RANK, "lora_alpha": 2 * LORA_RANK, "lora_dropout": 0.0,
                                     "target_modules": "all-linear"})
    if method == "qlora":
        raw["model"]["quantization"] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                        "bnb_4bit_use_double_quant": True}
    return {"peft": peft}


# --- text ------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _value_lines(plan: Plan) -> list[str]:
    """Each planned value with where it came from and the size row's value beside it."""
    v, row = plan.values, plan.row
    lines = [f"  {'value':<29}{'planned':>12}  {'from':<9}{'table':>9}"]
    table = {"learning_rate": row.learning_rate, "effective_batch_size": row.effective_batch_size,
             "num_train_epochs": row.num_train_epochs, "warmup_ratio": row.warmup_ratio,
             "weight_decay": row.weight_decay, "max_grad_norm": row.max_grad_norm,
             "lr_scheduler_type": row.lr_scheduler_type}
    for key in PLAN_KEYS[:PLAN_KEYS.index("lora_learning_rate")]:
        lines.append(f"  {key:<29}{_fmt(v[key]):>12}  {plan.sources.get(key, ''):<9}"
                     f"{_fmt(table[key]) if key in table else '':>9}")
    return lines


def _arithmetic_lines(plan: Plan) -> list[str]:
    """The batch and step arithmetic written out with the plan's numbers."""
    v = plan.values
    b, g, a = v["per_device_train_batch_size"], v["num_gpus"], v["gradient_accumulation_steps"]
    lines = [f"batch: {b} per device x {a} accumulation x {g} GPU(s) = {v['effective_batch_size']} "
             "rows per optimizer step"]
    if plan.examples is None:
        return lines + ["steps: unknown (give --examples N or --data PACKED_DIR)"]
    lines.append(f"rows: {plan.examples:,} from {plan.examples_from}")
    if plan.max_length:
        lines.append(f"tokens per optimizer step: at most {v['effective_batch_size'] * plan.max_length:,} "
                     f"({v['effective_batch_size']} rows x max_length {plan.max_length})")
    lines.append(f"steps: ceil({plan.examples} / ({b} x {g})) = {plan.micro_batches_per_epoch} micro-batches "
                 f"per GPU per epoch -> ceil(/{a}) = {v['optimizer_steps_per_epoch']} optimizer steps per epoch"
                 f" -> {v['total_steps']} total over {_fmt(v['num_train_epochs'])} epoch(s)")
    lines.append(f"warmup: {v['warmup_steps']} steps (ratio {_fmt(v['warmup_ratio'])}, rounded up)")
    return lines


def _memory_lines(plan: Plan) -> list[str]:
    """Memory per GPU by method and component, the method that fits, the LoRA learning rate."""
    from sftpack.planning.table import LORA_LR_FACTOR, LORA_LR_SOURCE

    memory = plan.memory
    lines = [f"memory per GPU (GiB; {memory['tokens']:,} tokens per micro-batch, weights in "
             f"{'bf16' if memory['dtype_bytes'] == 2 else 'float32'}, LoRA rank {memory['rank']}):",
             f"  {'method':<8}{'weights':>9}{'grads':>8}{'AdamW':>8}{'adapter':>9}{'activ.':>8}{'total':>8}"
             f"{'checkpointed':>14}"]
    for method, parts in memory["by"][False].items():
        gib, ck = parts.gib(), memory["by"][True][method].gib()
        lines.append(f"  {method:<8}{gib['weights']:>9}{gib['gradients']:>8}{gib['optimizer']:>8}{gib['adapter']:>9}"
                     f"{gib['activations']:>8}{gib['total']:>8}{ck['total']:>14}")
    if plan.values["method"]:
        lines.append(f"method: {plan.values['method']} (the cheapest that fits; full when full fits)")
    low, _, high = (plan.row.learning_rate * f for f in LORA_LR_FACTOR)
    lines.append(f"learning rate: full {plan.row.learning_rate:g}; LoRA {plan.values['lora_learning_rate']:g} "
                 f"(range {low:g}-{high:g}, {LORA_LR_SOURCE})")
    return lines


def _sample_lines(plan: Plan) -> list[str]:
    """The learning rate of each of SCHEDULES at the sample points (sample_steps)."""
    v = plan.values
    points = sample_steps(v["total_steps"], v["warmup_steps"])
    steps = [step for _, step in points]
    curves = {name: schedule_lrs(name, v["learning_rate"], v["warmup_steps"], v["total_steps"], steps)
              for name in SCHEDULES}
    lines = ["learning rate at sample points (transformers get_scheduler):",
             f"  {'point':<12}{'step':>7}" + "".join(f"{name:>22}" for name in SCHEDULES)]
    for i, (label, step) in enumerate(points):
        lines.append(f"  {label:<12}{step:>7}" + "".join(f"{curves[name][i]:>22.3e}" for name in SCHEDULES))
    return lines


def format_plan(plan: Plan) -> str:
    """The human-readable plan: values with their source, arithmetic, notes, rules, samples."""
    lines = [f"model: {plan.num_params:,} parameters ({plan.num_params / 1e9:.2f}B) from {plan.params_from}",
             f"size row: {plan.row.label}", ""]
    lines += _value_lines(plan) + [""] + _arithmetic_lines(plan) + [""] + _memory_lines(plan)
    if plan.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in plan.notes]
    lines += ["", "rules of thumb:"] + [f"  - {rule}" for rule in RULES_OF_THUMB]
    if plan.values["total_steps"] is not None:
        lines += [""] + _sample_lines(plan)
    return "\n".join(lines)


# --- plot ------------------------------------------------------------------------------


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
    from sftpack.store.atomic import atomic_file

    fig = draw_schedules(plan)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")
