"""sftpack from Python: the stages as functions. The command line (stages/, `sftpack.cli`) parses
its flags and calls exactly these.

    import sftpack
    folder = sftpack.pack(["chats.jsonl"], "out/packed", tokenizer="models/smollm2-135m-instruct",
                          max_length=1024)
    folder.dataset()          # the datasets.Dataset that TRL's SFTTrainer takes as it is

Keyword names are the run config's keys (`data.*`, with `tokenizer` for `model.name_or_path`);
given ones win over `config=` (a run config YAML), which wins over the defaults. How inputs are
read is `format`, `split` and `columns` (a ColumnMap, or a dict of its fields).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from sftpack.errors import SftpackError

if TYPE_CHECKING:
    from sftpack.config.run_config import RunConfig
    from sftpack.io.readers import ReadOptions
    from sftpack.planning.request import Plan
    from sftpack.store.packed_folder import PackedFolder

Inputs = Sequence["str | Path"]


def load_run_config(config: "str | Path | RunConfig | dict | None", overrides: Sequence[str] = (),
                    trainer: bool = True) -> "RunConfig | None":
    """A RunConfig from a YAML path, a mapping or a RunConfig (None stays None); `trainer=False` for
    the data stages, which read `model` and `data` only (run_config.build_config)."""
    from sftpack.config.run_config import RunConfig, build_config, load_config

    if config is None or isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return build_config(config, trainer=trainer)
    return load_config(config, list(overrides), trainer=trainer)


def read_options(config: "RunConfig | None", format: str | None = None, split: str | None = None,
                 columns: Any = None) -> "ReadOptions":
    """How inputs are read: the arguments, else the config's data.format, else auto-detection."""
    from sftpack.io.layouts import ColumnMap
    from sftpack.io.readers import ReadOptions

    if isinstance(columns, dict):
        columns = ColumnMap(**columns)
    default_format = config.data.format if config is not None else "auto"
    return ReadOptions(format=format or default_format, split=split, columns=columns or ColumnMap())


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if value is not None}


def _unknown(stage: str, options: dict[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SftpackError(f"{stage}: unknown option(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")


def validate(inputs: Inputs, out_dir: str | Path, *, config: Any = None, tokenizer: str | None = None,
             format: str | None = None, split: str | None = None, columns: Any = None,
             ray: str | None = None, **options: Any) -> dict[str, Any]:
    """Check conversations; write `<name>.jsonl` (kept lines), `.rejects.jsonl` and `.validate.json`.

    Args:
        inputs: files, folders, globs or dataset names, in any container and layout.
        out_dir: the output folder.
        config: a run config (path, mapping or RunConfig): model.name_or_path is the default
            tokenizer, data.format the default format, data.ray the default ray, data.chat_template
            and data.chat_template_kwargs the default template and its arguments.
        tokenizer: tokenizer folder: adds the chat-template and control-token checks.
        format, split, columns: how inputs are read.
        ray: check on a Ray cluster (local, auto, HOST:PORT); the same outputs.
        **options: ValidateConfig fields (max_turn_chars, allow_rejects, ...); num_proc: processes here
            (default: the available cores; the outputs are the same for any number).

    Returns:
        {"files": [each input's manifest], "totals": read/kept/rejected/blank summed}.

    Raises:
        SftpackError: unreadable inputs or options (rejected lines are counted, not raised).
    """
    from sftpack.config.data_options import execution
    from sftpack.validation.stage import ValidateConfig, run

    run_config = load_run_config(config, trainer=False)
    _unknown("validate", options, [f.name for f in dataclasses.fields(ValidateConfig)] + ["num_proc"])
    where = execution(run_config, ray, options.pop("num_proc", None))
    cfg = ValidateConfig.from_run_config(run_config, tokenizer=tokenizer, **options)
    return run(list(inputs), out_dir, cfg, read_options(run_config, format, split, columns), where)


def _mixed_inputs(inputs: Inputs, out_dir: str | Path) -> list[str | Path]:
    """Inputs with each mix folder replaced by its train.jsonl, and each recipe (a .yaml/.yml file)
    mixed first, into `out_dir`'s sibling `mix/` (out/packed -> out/mix), then replaced likewise."""
    from sftpack.store.manifest import read_manifest

    resolved: list[str | Path] = []
    for spec in inputs:
        path = Path(spec)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            path = Path(mix(path, Path(out_dir).parent / "mix")["path"])
        if path.is_dir() and "mix_format" in (read_manifest(path) or {}):
            resolved.append(path / "train.jsonl")
        else:
            resolved.append(spec)
    return resolved


def pack(inputs: Inputs, out_dir: str | Path, *, config: Any = None, format: str | None = None,
         split: str | None = None, columns: Any = None, **options: Any) -> "PackedFolder":
    """Check, template, mask and pack conversations into `out_dir/<fingerprint>/`, or reuse it.

    Args:
        inputs: files, folders, globs or dataset names, in any container and layout; a mix folder
            (its train.jsonl) or a mix recipe (.yaml: mixed into `out_dir/../mix` first).
        out_dir: parent of the packed folder.
        config: a run config (path, mapping or RunConfig) giving model.name_or_path and data.*.
        format, split, columns: how inputs are read.
        **options: PackConfig fields: tokenizer, max_length, chat_template, strategy, train_on,
            turns, reasoning, truncation, ...; num_proc (processes here, default: the available
            cores) or ray (a Ray cluster's address): where the work runs, never what it writes.

    Returns:
        The PackedFolder (`.reused` says whether it was there already; `.dataset()` the rows).

    Raises:
        SftpackError: unreadable inputs, bad options or tokenizer, nothing left to pack.
    """
    from sftpack.config.data_options import execution
    from sftpack.packing import stage as pack_stage
    from sftpack.packing.options import PackConfig
    from sftpack.store.packed_folder import PackedFolder

    run_config = load_run_config(config, trainer=False)
    _unknown("pack", options, [f.name for f in dataclasses.fields(PackConfig)] + ["num_proc", "ray"])
    given = _given(options)
    where = execution(run_config, given.pop("ray", None), given.pop("num_proc", None))
    if run_config is not None:
        cfg = PackConfig.from_run_config(run_config, **given)
    elif "tokenizer" not in given:
        raise SftpackError("give tokenizer= (--tokenizer PATH), or a config with model.name_or_path")
    else:
        cfg = PackConfig(**given)
    manifest = pack_stage.run(_mixed_inputs(inputs, out_dir), out_dir, cfg,
                              read_options(run_config, format, split, columns), where)
    return PackedFolder(Path(manifest["path"]), manifest)


def report(inputs: Inputs, out: str | Path, *, config: Any = None, format: str | None = None,
           split: str | None = None, columns: Any = None, recipe: Any = None, mix_dir: str | Path = "out/mix",
           **options: Any) -> dict[str, Any]:
    """The QA report of conversations, or of one packed folder: `out` (HTML) and report.json beside it.

    With `recipe`, the mixture report instead (inputs empty): the recipe mixed into `mix_dir` (or
    reused), shown before and after: shares per source, removals by reason, contaminated
    benchmarks with matches, near-duplicate clusters side by side.

    Args:
        inputs: conversations in any container and layout, or one packed folder.
        out: the HTML path.
        config: a run config giving model.name_or_path and data.*.
        format, split, columns: how inputs are read.
        **options: ReportConfig fields: tokenizer, max_length, train_on, turns, reasoning, ...

    Returns:
        What report.json holds, plus `html` and `json` (the paths written).
    """
    if recipe is not None:
        if inputs or options:
            raise SftpackError("report --recipe: give the recipe alone (no inputs or data options)")
        from sftpack.reporting import mixture

        return mixture.run(recipe, out, mix_dir)
    from sftpack.config.data_options import data_values
    from sftpack.reporting import stage as report_stage
    from sftpack.reporting.scan import ReportConfig

    run_config = load_run_config(config, trainer=False)
    _unknown("report", options, [f.name for f in dataclasses.fields(ReportConfig)])
    values = data_values(run_config, options)
    values.pop("strategy", None)  # the estimate packs as pack does by default (bfd)
    return report_stage.run(list(inputs), out, ReportConfig(**values), read_options(run_config, format, split, columns))


def mix(recipe: Any, out_dir: str | Path, *, ray: str | None = None, allow_rejects: bool | None = None) -> dict[str, Any]:
    """Mix a recipe's sources into one clean, decontaminated, weighted set: `out_dir/<fingerprint>/`.

    Args:
        recipe: a recipe YAML path, a mapping or a `sftpack.mixing.recipe.Recipe` (README "Mixtures").
        out_dir: parent of the mixture folder (train.jsonl, eval/<source>.jsonl, removed.jsonl,
            manifest.json); an unchanged recipe reuses it.
        ray: run the lookups, band keys and per-component deduplication on a Ray cluster (local, auto,
            HOST:PORT); the same files.
        allow_rejects: mix the rest when lines fail the schema or the conversation rules (over the
            recipe's `allow_rejects`).

    Returns:
        The manifest, with `path` and `reused`.

    Raises:
        SftpackError: an invalid recipe (every problem at once, each naming its key), an empty source;
            rejected lines without allow_rejects; no training example.
    """
    from sftpack.config.data_options import execution
    from sftpack.mixing import stage as mix_stage

    return mix_stage.run(recipe, out_dir, allow_rejects, execution(None, ray))


def plan(*, plot: str | Path | None = None, write_config: str | Path | None = None,
         write_json: str | Path | None = None, **request: Any) -> "Plan":
    """Starting hyperparameters by model size, batch arithmetic and learning-rate schedules.

    Args:
        plot: PNG of the learning rate per step.
        write_config: a run config YAML with the planned `train` values.
        write_json: the planned values as a JSON file.
        **request: PlanRequest fields: model, params, gpus, per_device_batch, target_batch,
            examples, data (a packed folder), epochs, config.

    Returns:
        The Plan (`.values` are the planned SFTConfig values).
    """
    from sftpack.planning import stage as plan_stage
    from sftpack.planning.request import PlanRequest

    _unknown("plan", request, [f.name for f in dataclasses.fields(PlanRequest)])
    return plan_stage.run(PlanRequest(**request), plot=plot, config_out=write_config, json_out=write_json)


def export(source: str | Path, out: str | Path, *, format: str = "hf", outtype: str = "f16") -> dict[str, Any]:
    """A trained run as one merged full model: an adapter merged into its base, or a full fine-tune copied,
    with a generation_config.json that stops on the markers the run trained the model to emit.

    Args:
        source: a run folder (train.output_dir: its final/), or a checkpoint-N or final/ folder.
        out: the output folder (replaced atomically; export.json, the provenance, last).
        format: hf (loads with AutoModelForCausalLM.from_pretrained(out)) or gguf (llama.cpp, Ollama).
        outtype: GGUF weight type: f16, bf16 or q8_0 (format gguf only).

    Returns:
        The export manifest (also out/export.json).

    Raises:
        SftpackError: no model in `source`, its base model missing, an unknown format or outtype.
    """
    from sftpack.exporting import stage as export_stage

    return export_stage.run(source, out, export_stage.ExportConfig(format=format, outtype=outtype))


def train(config: Any, overrides: Sequence[str] = (), callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune with TRL's SFTTrainer on packed folders (raw data is validated and packed first).

    Args:
        config: a run config: a YAML path, a mapping or a RunConfig.
        overrides: dotted `key=value` overrides (with a YAML path).
        callbacks: extra transformers TrainerCallbacks.

    Returns:
        The run manifest (also written to output_dir/sftpack_run.json).
    """
    from sftpack.training import stage as train_stage

    return train_stage.run(load_run_config(config, overrides), callbacks)
