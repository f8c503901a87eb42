"""Plan a run: starting hyperparameters by model size, batch arithmetic, LR schedules.

    parameters (config.json on the meta device, or --params) ──> size row (plan.table)
    flags > base run config `train` > size row ──> learning rate, epochs, warmup, ... (choose)
    target effective batch / (per-device x GPUs) ──> gradient accumulation steps
    model dims x micro-batch tokens ──> memory per GPU for full, lora, qlora (plan.memory); the
                                        cheapest that fits --gpu-memory (full when full fits)
    packed rows (manifest totals.rows or --examples) ──> optimizer steps per epoch, total, warmup
                                                         (plan.arithmetic, as the Trainer counts)
    Plan ──> text table, --json, run config, LR plot (plan.format)

This module resolves the request into a `Plan` and writes the files asked for (`run`); the
numbers live in `pipeline/planning/table.py`, the arithmetic in `pipeline/planning/arithmetic.py`, the
output formats in `pipeline/planning/format.py`.
"""

from __future__ import annotations


from pathlib import Path
from typing import Any, Mapping

from sftpack.errors import SftpackError
from sftpack.planning.arithmetic import BatchPlan, StepCounts, count_steps, plan_batch
from sftpack.planning.format import plan_config, plan_json, write_plot
from sftpack.planning.request import Plan, PlanRequest
from sftpack.planning.strategy import fitting_method, full_finetune_choice
from sftpack.planning.table import (DEFAULT_PER_DEVICE_BATCH, LORA_LR_FACTOR, LORA_RANK, SizeRow, count_parameters,
                                    parse_params, pick_row)


def run(req: PlanRequest, plot: str | Path | None = None, config_out: str | Path | None = None,
        json_out: str | Path | None = None) -> Plan:
    """Plan the run and write the files asked for.

    The run config is built (and so validated) before anything is written, and the JSON is
    written last: a make target on it sees the plot and config complete.

    Args:
        req: what was asked.
        plot: PNG of the learning rate per step (plan.format.SCHEDULES).
        config_out: run config YAML with the planned `train` values.
        json_out: the `--json` object as a file.

    Returns:
        The plan.

    Raises:
        SftpackError: see `make_plan`; also a run config that cannot be written (no model or
            training data to name) or a plot without step counts.
    """
    from sftpack.store.atomic import write_json
    from sftpack.config.run_config import write_config

    plan = make_plan(req)
    run_config = plan_config(plan) if config_out else None
    if plot:
        write_plot(plan, plot)
    if run_config is not None:
        from sftpack.planning.strategy import write_accelerate_config

        write_config(config_out, run_config)
        write_accelerate_config(plan.strategy, plan.values["method"], str(config_out))  # beside it, when needed
    if json_out:
        write_json(json_out, plan_json(plan))
    return plan


def make_plan(req: PlanRequest) -> Plan:
    """Resolve every planned value: flags, then the base config's `train`, then the size row.

    Raises:
        SftpackError: bad or conflicting flags, unreadable model/data/config (all flag
            problems at once), out-of-range base config values (all at once).
    """
    _check_request(req)
    base = None
    if req.config is not None:
        from sftpack.config.run_config import load_config

        base = load_config(req.config)
    base_train: Mapping[str, Any] = base.train if base else {}
    model_path, num_params, params_from = _model_size(req, base)
    row, note = pick_row(num_params)
    notes = [note] if note else []

    start, sources = _starting_values(req, base_train, row)
    _check_ranges(start, base_train, base.source if base else "config")
    batch, sources["gradient_accumulation_steps"] = _batch(
        req, start["per_device_train_batch_size"], base_train.get("gradient_accumulation_steps"), row)
    sources["effective_batch_size"] = sources["gradient_accumulation_steps"]
    notes += [batch.note] if batch.note else []

    examples, examples_from, max_length, row_notes = _rows(req, base)
    notes += row_notes
    notes += _unpacked_note(model_path, req.data)
    max_steps = base_train.get("max_steps")
    max_steps = max_steps if max_steps is not None and max_steps > 0 else None  # -1: by epochs
    steps = count_steps(examples, batch, start["num_train_epochs"], start["warmup_steps"], max_steps)
    if examples is not None and max_steps is not None:
        notes.append(f"train.max_steps={max_steps} in the base config overrides num_train_epochs")
    notes += steps.notes

    sources.update({"num_gpus": "flag" if req.gpus != 1 else "default", "warmup_ratio": sources["warmup_steps"],
                    "optimizer_steps_per_epoch": "computed", "total_steps": "computed"})
    memory = _memory(req, base, model_path, num_params, start["per_device_train_batch_size"], max_length, notes)
    choice = memory["choice"]
    notes += [f"strategy {choice.strategy} on {req.gpus} GPU(s) of {req.gpu_memory:g} GiB: {choice.reason}"] if choice else []
    values = _planned_values(start, batch, steps) | _memory_values(memory, row, start, sources)
    return Plan(
        num_params=num_params, params_from=params_from, row=row, values=values, sources=sources, memory=memory,
        examples=examples, examples_from=examples_from, micro_batches_per_epoch=steps.micro_batches_per_epoch,
        max_length=max_length, notes=tuple(notes), base_config=base, model_path=model_path,
        data_path=req.data, extra_train={"warmup_steps": start["warmup_steps"]}, strategy=choice,
    )


# --- resolving values ------------------------------------------------------------------


def choose(flag: Any, base_train: Mapping[str, Any], key: str, table: Any) -> tuple[Any, str]:
    """One value by precedence: a flag, else the base config's `train[key]`, else the table.

    A config value of null counts as not given.

    Returns:
        (value, where it came from: "flag", "config" or "table").
    """
    if flag is not None:
        return flag, "flag"
    if base_train.get(key) is not None:
        return base_train[key], "config"
    return table, "table"


def _starting_values(req: PlanRequest, base_train: Mapping[str, Any],
                     row: SizeRow) -> tuple[dict[str, Any], dict[str, str]]:
    """The train values the plan starts from, by `choose`, and where each came from."""
    wanted = {  # train key -> (flag, size row value)
        "learning_rate": (None, row.learning_rate),
        "num_train_epochs": (req.epochs, row.num_train_epochs),
        # transformers 5: warmup_steps below 1 is a ratio; the table gives a ratio.
        "warmup_steps": (None, row.warmup_ratio),
        "weight_decay": (None, row.weight_decay),
        "max_grad_norm": (None, row.max_grad_norm),
        "lr_scheduler_type": (None, row.lr_scheduler_type),
        "per_device_train_batch_size": (req.per_device_batch, DEFAULT_PER_DEVICE_BATCH),
    }
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, (flag, table) in wanted.items():
        values[key], sources[key] = choose(flag, base_train, key, table)
    if sources["per_device_train_batch_size"] == "table":
        sources["per_device_train_batch_size"] = "default"  # not a row value: DEFAULT_PER_DEVICE_BATCH
    epochs = values["num_train_epochs"]
    if isinstance(epochs, float) and epochs.is_integer():
        values["num_train_epochs"] = int(epochs)  # --epochs 3 prints and saves as 3, not 3.0
    return values, sources


def _check_ranges(start: Mapping[str, Any], base_train: Mapping[str, Any], where: str) -> None:
    """Refuse out-of-range base config values (flags were checked by _check_request).

    Types need no check here: load_config checked every `train` value against SFTConfig's
    annotation (pipeline/config/run_config.py); the ranges are what SFTConfig cannot say.

    Raises:
        SftpackError: every out-of-range value, each naming its key.
    """
    errors = []
    for key in ("learning_rate", "num_train_epochs", "warmup_steps", "weight_decay", "max_grad_norm"):
        if start[key] < 0:
            errors.append(f"{where}: train.{key} {start[key]!r} must be a number >= 0")
    for key in ("learning_rate", "num_train_epochs"):
        if start[key] == 0:
            errors.append(f"{where}: train.{key} must be above 0")
    per_device = start["per_device_train_batch_size"]
    if per_device < 1:
        errors.append(f"{where}: train.per_device_train_batch_size {per_device!r} must be a whole number >= 1")
    accumulation = base_train.get("gradient_accumulation_steps")
    if accumulation is not None and accumulation < 1:
        errors.append(f"{where}: train.gradient_accumulation_steps {accumulation!r} must be a whole number >= 1")
    if errors:
        raise SftpackError("; ".join(errors))


def _model_size(req: PlanRequest, base) -> tuple[str | None, int, str]:
    """(model folder, parameter count, where the count came from)."""
    model_path = req.model
    if model_path is None and req.params is None:
        model_path = base.model.name_or_path  # _check_request: no --model/--params means --config
    if req.params is not None:
        return model_path, parse_params(req.params), "--params"
    return model_path, count_parameters(model_path), f"{model_path}/config.json"


def _batch(req: PlanRequest, per_device: int, base_accumulation: int | None,
           row: SizeRow) -> tuple[BatchPlan, str]:
    """The effective batch: --target-batch, else the base config's accumulation, else the row.

    Returns:
        (batch plan, where its accumulation came from).
    """
    if req.target_batch is not None:
        return plan_batch(per_device, req.gpus, target=req.target_batch), "flag"
    if base_accumulation is not None:
        return plan_batch(per_device, req.gpus, accumulation=base_accumulation), "config"
    return plan_batch(per_device, req.gpus, target=row.effective_batch_size), "table"


def _planned_values(start: Mapping[str, Any], batch: BatchPlan, steps: StepCounts) -> dict[str, Any]:
    """The `--json` object, in plan.format.PLAN_KEYS order."""
    return {
        "learning_rate": float(start["learning_rate"]),
        "effective_batch_size": batch.effective,
        "per_device_train_batch_size": start["per_device_train_batch_size"],
        "gradient_accumulation_steps": batch.accumulation,
        "num_gpus": batch.gpus,
        "num_train_epochs": start["num_train_epochs"],
        "warmup_ratio": steps.warmup_ratio,
        "warmup_steps": steps.warmup_steps,
        "weight_decay": float(start["weight_decay"]),
        "max_grad_norm": float(start["max_grad_norm"]),
        "lr_scheduler_type": start["lr_scheduler_type"],
        "optimizer_steps_per_epoch": steps.optimizer_steps_per_epoch,
        "total_steps": steps.total_steps,
    }


def _memory(req: PlanRequest, base, model_path: str | None, num_params: int, per_device: int,
            max_length: int | None, notes: list[str]) -> dict[str, Any]:
    """Memory per GPU by method, with and without activation checkpointing, and the method that fits."""
    from sftpack.config.data_options import DEFAULT_MAX_LENGTH
    from sftpack.planning.memory import METHODS, ModelShape, estimate, recommend

    why = "no config.json"
    try:
        shape = ModelShape.from_config(model_path) if model_path else ModelShape.from_parameters(num_params)
    except ValueError as err:  # not an attention decoder the estimate knows: estimated from the size
        why, shape = f"{model_path}/config.json: {err}", ModelShape.from_parameters(num_params)
    if shape.approximate:
        notes.append(f"memory: {why}, so a Llama-like shape of {shape.parameters / 1e9:.2f}B parameters "
                     f"({shape.layers} layers, hidden {shape.hidden}, vocabulary 32k) stands in"
                     f"{'; give --model for exact dims' if not model_path else ''}")
    tokens = per_device * (max_length or DEFAULT_MAX_LENGTH)
    dtype_bytes = 4 if base is not None and base.model.dtype == "float32" else 2  # auto on a GPU: bf16
    rank = int((base.peft or {}).get("r", LORA_RANK)) if base is not None else LORA_RANK
    by = {checkpointing: {method: estimate(shape, method, tokens=tokens, dtype_bytes=dtype_bytes, rank=rank,
                                           checkpointing=checkpointing, world_size=req.gpus) for method in METHODS}
          for checkpointing in (False, True)}
    totals = {ck: {method: memory.gib()["total"] for method, memory in by[ck].items()} for ck in by}
    choice = method = checkpointing = None
    if req.gpu_memory is not None:
        choice = full_finetune_choice(by, shape.layers, req.gpus, req.gpu_memory)
        method, checkpointing = fitting_method(totals, choice, req.gpu_memory)
        if checkpointing:
            notes.append(f"{method} fits {req.gpu_memory:g} GiB only with activation checkpointing: "
                         f"train.gradient_checkpointing=true")
        if method is None:
            notes.append(f"no method fits {req.gpu_memory:g} GiB per GPU at {tokens} tokens per micro-batch, even "
                         f"qlora with checkpointing ({totals[True]['qlora']} GiB): lower --per-device-batch or "
                         f"data.max_length, or use more GPUs with sharding (FSDP)")
    return {"by": by, "totals": totals, "method": method, "checkpointing": checkpointing, "tokens": tokens,
            "dtype_bytes": dtype_bytes, "rank": rank, "shape": shape, "choice": choice}


def _memory_values(memory: Mapping[str, Any], row: SizeRow, start: dict[str, Any], sources: dict[str, str]) -> dict:
    """memory_gib (and with checkpointing), method, the LoRA rate; an adapter method takes the LoRA
    rate as the planned learning_rate when the table gave it."""
    lora_rate = row.learning_rate * LORA_LR_FACTOR[1]
    if memory["method"] in ("lora", "qlora") and sources["learning_rate"] == "table":
        start["learning_rate"] = lora_rate
        sources["learning_rate"] = "table (lora)"
    sources.update(lora_learning_rate="table", memory_gib="computed", memory_gib_checkpointing="computed",
                   method="computed")
    return {"learning_rate": float(start["learning_rate"]), "lora_learning_rate": lora_rate,
            "memory_gib": memory["totals"][False], "memory_gib_checkpointing": memory["totals"][True],
            "method": memory["method"]}


# --- training rows ---------------------------------------------------------------------


def _rows(req: PlanRequest, base) -> tuple[int | None, str, int | None, list[str]]:
    """Rows from --examples, else --data's manifest, else the base config's data.train.

    Returns:
        (rows or None, where they came from, row length in tokens or None, notes).
    """
    max_length = base.data.max_length if base else None
    if req.examples is not None:
        return req.examples, "--examples", max_length, []
    if req.data is not None:
        examples, manifest_length = _read_packed_rows(req.data, "--data")
        notes = []
        if base and manifest_length is not None and manifest_length != base.data.max_length:
            notes.append(f"{req.data} was packed with max_length {manifest_length}, the base config says "
                         f"data.max_length {base.data.max_length}")
        max_length = manifest_length if manifest_length is not None else max_length
        return examples, f"{req.data}/manifest.json", max_length, notes
    if base is not None:
        examples, examples_from, note = _examples_from_config(base)
        return examples, examples_from, max_length, [note] if note else []
    return None, "unknown", None, ["no --examples or --data: step counts are unknown"]


def _unpacked_note(model_path: str | None, data: str | None) -> list[str]:
    """A note when this model trains unpacked on this machine (training.isolation), with the cost in rows."""
    from sftpack.store.packed_folder import PackedFolder
    from sftpack.training.runtime import unpacked_note

    packed = PackedFolder.at(data) if data else None
    note = unpacked_note(model_path, packed.manifest.get("totals") if packed else None)
    return [note] if note else []


def _read_packed_rows(folder: str | Path, what: str) -> tuple[int, int | None]:
    """(totals.rows, options.max_length) of a packed folder's manifest."""
    from sftpack.store.packed_folder import PackedFolder

    packed = PackedFolder.at(folder)
    manifest = packed.manifest if packed else None
    if manifest is None:
        raise SftpackError(f"{what} {folder}: no manifest.json (not a packed folder, or unreadable); "
                           "run `sftpack pack` first, or give --examples N")
    try:
        rows = int(manifest["totals"]["rows"])
    except (KeyError, TypeError, ValueError) as err:
        raise SftpackError(f"{Path(folder) / 'manifest.json'}: unreadable manifest (need totals.rows): {err}") from None
    max_length = (manifest.get("options") or {}).get("max_length")
    return rows, int(max_length) if max_length is not None else None


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


# --- flags -----------------------------------------------------------------------------


def _positive(name: str, value: Any, errors: list[str], allow_float: bool = False) -> None:
    if value is None:
        return
    kinds = (int, float) if allow_float else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        need = "a positive number" if allow_float else "a positive whole number"
        errors.append(f"{name} {value!r}: must be {need}")


def _check_request(req: PlanRequest) -> None:
    """Refuse bad or conflicting flags, all at once.

    Raises:
        SftpackError: every problem, joined by "; ".
    """
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
    _positive("--gpu-memory", req.gpu_memory, errors, allow_float=True)
    if errors:
        raise SftpackError("; ".join(errors))
