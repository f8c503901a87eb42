"""The run config: one YAML, validated against `schemas/run_config.schema.json`.

Sections: `model`, `data`, `monitor` (typed frozen dataclasses below; defaults live only
here), `train`, whose keys are TRL `SFTConfig` field names passed through unchanged, and `peft`
(optional: an adapter instead of full fine-tuning), whose keys are PEFT `LoraConfig` field names,
passed through the same way; `model.quantization` holds `BitsAndBytesConfig` names (QLoRA).
All problems in a config are collected and raised once, each naming its key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from sftpack.config.data_options import DEFAULT_MAX_LENGTH
from sftpack.errors import SftpackError

SCHEMA_PATH = files("sftpack.schemas") / "run_config.schema.json"  # schemas/ in the repo, sftpack/schemas/ installed

# SFTConfig fields that the pack stage owns: setting them under `train` would be read in
# two places (or silently ignored), so they are refused with the key to use instead.
OWNED_BY_DATA = {
    "max_length": "data.max_length", "truncation_mode": "data.truncation",
    "packing": "data.packing", "packing_strategy": "data.packing", "padding_free": "data.packing",
    "eval_packing": "data.packing",
    "assistant_only_loss": "data.train_on", "completion_only_loss": "data.train_on",
    "chat_template_path": "data.chat_template", "dataset_text_field": "data.train", "dataset_kwargs": "data.train",
}


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "models/smollm2-135m-instruct"
    """Local HF model folder (or hub id where a hub is reachable)."""
    dtype: str = "auto"
    """auto (bf16 on a GPU that supports it, else float32) | bfloat16 | float32."""
    attn_implementation: str = "auto"
    """auto (flash_attention_2 when installed on Ampere+, else sdpa) | flash_attention_2 | sdpa | eager."""
    quantization: Mapping[str, Any] | None = None
    """transformers `BitsAndBytesConfig` keyword arguments (load_in_4bit, bnb_4bit_quant_type, ...): the
    base weights load quantized and only a `peft` adapter trains (QLoRA); null loads them unquantized."""


@dataclass(frozen=True)
class DataConfig:
    train: str | None = None
    """Raw messages JSONL (validated and packed on the fly, reused by fingerprint) or a packed folder."""
    validation: str | None = None
    """Same as `train`, for evaluation; null for no evaluation."""
    recipe: str | None = None
    """A mix recipe (YAML, README "Mixtures") instead of train/validation: its train.jsonl is trained
    on and every eval/<source> split is evaluated separately (eval_<source>_loss, and eval_loss over
    all of them). Mixed into `out_dir`/mix, reused by fingerprint."""
    format: str = "auto"
    """Layout of raw inputs: auto (from the first record's keys) | messages | sharegpt | alpaca | prompt_completion (pipeline/io/readers.py)."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Longest packed row in tokens; also the longest example kept."""
    packing: bool = True
    """Best-fit-decreasing packing of several examples per row; false: one example per row."""
    train_on: str = "all"
    """all: every assistant turn is trained; last: only the final assistant turn."""
    turns: str = "auto"
    """auto: split a conversation where its template renders a turn unlike at inference (Qwen3,
    gpt-oss, R1); whole: train the full rendering as it is. README "Turns and reasoning"."""
    reasoning: str = "train"
    """Assistant reasoning: train (with the answer), mask (rendered, not trained), drop (removed)."""
    truncation: str = "drop"
    """What happens to examples longer than max_length: drop (counted) or truncate (counted)."""
    chat_template: str | None = None
    """Path to a Jinja chat template overriding the tokenizer's own."""
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Template arguments for every render (enable_thinking, reasoning_effort, ...); a record's own
    `chat_template_kwargs` take precedence. TRL's `chat_template_kwargs`."""
    stop_tokens: list[str] | None = None
    """The tokens that end an assistant turn; null: generation_config.json's eos_token_id, else
    inferred from the template's rendering (with a warning)."""
    out_dir: str = "out"
    """Where validate/pack write when `train` is given raw JSONL."""
    allow_rejects: bool = False
    """Raw `train`/`validation` data with lines validate rejects: false stops with the rejects
    file's path (as `make validate` stops); true trains on the kept lines, rejects counted."""
    packing_isolation: str = "auto"
    """auto: train packed where a probe shows the model keeps packed sequences apart, else the same rows
    unpacked (one sequence per batch row, padded; exact, slower) with one log line; require: refuse,
    before any work, to train a model unpacked (pipeline/training/isolation.py)."""
    ray: str | None = None
    """Ray cluster address for validate and pack (local, auto, HOST:PORT, ray://HOST:PORT); null runs
    on this machine. The outputs are the same (README "More than one machine")."""


@dataclass(frozen=True)
class MonitorConfig:
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without eval_loss improving; null disables."""
    grad_norm_high: float = 10.0
    """Warn when the gradient norm exceeds this (exploding gradients)."""
    grad_norm_low: float = 1e-6
    """Warn when the gradient norm falls below this (vanishing gradients)."""
    loss_spike_factor: float = 2.0
    """Warn when a logged loss exceeds this multiple of the recent average."""
    throughput_drop_factor: float = 0.5
    """Warn when tokens/s falls below this fraction of the running median."""
    sample_prompts: tuple[str, ...] = ()
    """User prompts answered greedily before and after training (samples.json): the evidence."""
    sample_max_new_tokens: int = 48
    """Length of those answers in tokens."""


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    train: Mapping[str, Any] = field(default_factory=dict)
    """TRL SFTConfig keyword arguments, exactly as written."""
    peft: Mapping[str, Any] | None = None
    """PEFT LoraConfig keyword arguments, exactly as written (target_modules defaults to all-linear;
    use_dora: true is DoRA); None: full fine-tuning."""
    source: str = "<dict>"
    """Where the config came from, for messages."""

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (saved beside every run)."""
        return {
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "monitor": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.monitor).items()},
            "train": dict(self.train),
        } | ({"peft": dict(self.peft)} if self.peft is not None else {})


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as booleans, which
    would turn TRL values such as `eval_strategy: no` into False."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# YAML 1.2 floats: YAML 1.1 needs a dot before the exponent, so `5e-4` (a learning rate) was a string.
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    """YAML as sftpack reads it (config files and command-line override values)."""
    return yaml.load(text, Loader=_YamlLoader)


def sft_config_fields() -> dict[str, Any]:
    """Field name -> type annotation of the installed TRL `SFTConfig`."""
    from trl import SFTConfig

    hints = typing.get_type_hints(SFTConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(SFTConfig)}


def _close(key: str, valid: list[str]) -> str:
    matches = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(matches)}?" if matches else ""


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _type_ok(value: Any, annotation: Any) -> bool:
    """Loose check of a YAML value against a simple annotation; unknown shapes pass."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


# Keys whose YAML values may be wider than the SFTConfig annotation: sftpack resolves them
# before SFTConfig sees them (resume_from_checkpoint: true = the last checkpoint).
WIDER_TYPES = {"resume_from_checkpoint": str | bool | None}


# LoraConfig fields that sftpack sets from the run: the task, the base model, training mode.
OWNED_BY_SFTPACK = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
                    "revision", "inference_mode"}


def lora_config_fields() -> dict[str, Any]:
    """Field name -> type annotation of the installed PEFT `LoraConfig` (its __init__ arguments)."""
    from peft import LoraConfig

    hints = typing.get_type_hints(LoraConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(LoraConfig)
            if f.init and f.name not in OWNED_BY_SFTPACK}


def quantization_fields() -> list[str]:
    """The keyword arguments of the installed transformers `BitsAndBytesConfig`."""
    import inspect

    from transformers import BitsAndBytesConfig

    parameters = inspect.signature(BitsAndBytesConfig.__init__).parameters.items()
    return [name for name, p in parameters if name != "self" and p.kind is not p.VAR_KEYWORD]


def _section_errors(section: str, values: Mapping[str, Any], fields: Mapping[str, Any], what: str) -> list[str]:
    """Unknown keys (naming every valid one) and values of the wrong type, in a pass-through section."""
    errors = []
    for key, value in values.items():
        if key not in fields:
            errors.append(f"{section}.{key}: not a {what} field.{_close(key, list(fields))} Valid keys: "
                          f"{', '.join(sorted(fields))}.")
        elif not _type_ok(value, fields[key]):
            errors.append(f"{section}.{key}: {value!r} is not of type {_type_name(fields[key])}.")
    return errors


def _adapter_errors(raw: Mapping[str, Any]) -> list[str]:
    """The `peft` section against LoraConfig, `model.quantization` against BitsAndBytesConfig."""
    peft, quantization = raw.get("peft"), (raw.get("model") or {}).get("quantization")
    errors = [f"peft.{key}: set by sftpack (a causal LM adapter on model.name_or_path); remove it"
              for key in sorted(OWNED_BY_SFTPACK & set(peft if isinstance(peft, Mapping) else ()))]
    if isinstance(peft, Mapping):
        errors += _section_errors("peft", {k: v for k, v in peft.items() if k not in OWNED_BY_SFTPACK},
                                  lora_config_fields(), "PEFT LoraConfig")
        rank = peft.get("r")
        if isinstance(rank, int) and not isinstance(rank, bool) and rank < 1:  # PEFT says so only on the model
            errors.append(f"peft.r: {rank} is not a rank; the adapter's rank is a positive integer (8, 16, 64)")
    if isinstance(quantization, Mapping):
        errors += _section_errors("model.quantization", quantization, dict.fromkeys(quantization_fields(), Any),
                                  "transformers BitsAndBytesConfig")
        if peft is None:
            errors.append("model.quantization needs a peft section: quantized weights do not train, an adapter "
                          "does (QLoRA); add `peft: {r: 16}` or remove model.quantization")
    return errors


def _train_errors(train: Mapping[str, Any]) -> list[str]:
    fields = sft_config_fields() | WIDER_TYPES
    errors = []
    for key, value in train.items():
        if key in OWNED_BY_DATA:
            errors.append(
                f"train.{key}: conflicts with {OWNED_BY_DATA[key]} (packing is done offline "
                f"by sftpack); set {OWNED_BY_DATA[key]} instead and remove train.{key}."
            )
        elif key not in fields:
            errors.append(
                f"train.{key}: not a TRL SFTConfig field.{_close(key, list(fields))}"
            )
        elif not _type_ok(value, fields[key]):
            errors.append(f"train.{key}: {value!r} is not of type {_type_name(fields[key])}.")
    return errors


def _schema_errors(raw: Mapping[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for err in sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        if err.validator == "additionalProperties":
            sub = schema
            for part in err.absolute_path:
                sub = sub["properties"][part]
            valid = sorted(sub["properties"])
            extra = sorted(set(err.instance) - set(valid))
            for key in extra:
                name = f"{where}.{key}" if err.absolute_path else key
                errors.append(
                    f"{name}: unknown key; valid keys here: {', '.join(valid)}.{_close(key, valid)}"
                )
        else:
            errors.append(f"{where}: {err.message}")
    return errors


def cross_field_errors(raw: Mapping[str, Any]) -> list[str]:
    """Every pair of keys that cannot go together, each naming both. What depends on the run waits
    for train (pipeline/training/args.py): `train.bf16` against `model.dtype: auto` (the device decides),
    and evaluation against `data.validation` (make passes the packed folders to train only)."""
    train, model = raw.get("train") or {}, raw.get("model") or {}
    monitor = raw.get("monitor") or {}
    errors = []
    dtype = model.get("dtype", "auto")
    if "bf16" in train and dtype != "auto" and bool(train["bf16"]) != (dtype == "bfloat16"):
        errors.append(f"train.bf16 {train['bf16']} conflicts with model.dtype {dtype}; remove train.bf16 (it "
                      f"follows model.dtype) or set model.dtype to match")
    data = raw.get("data") or {}
    for key in ("train", "validation"):
        if data.get("recipe") and data.get(key):
            errors.append(f"data.recipe and data.{key} both given; the recipe makes the {key} data: remove one")
    evaluates = train.get("eval_strategy", "no") != "no"
    if monitor.get("early_stopping_patience") is not None:
        if not train.get("load_best_model_at_end"):
            errors.append("monitor.early_stopping_patience needs train.load_best_model_at_end=true")
        if not evaluates:
            errors.append("monitor.early_stopping_patience needs train.eval_strategy=steps (or epoch)")
    return errors


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML) to a raw config dict.

    Raises:
        SftpackError: an override without `=` or a dotted path through a non-mapping.
    """
    for item in overrides:
        if "=" not in item:
            raise SftpackError(f"override {item!r}: expected section.key=value, e.g. train.max_steps=20")
        dotted, text = item.split("=", 1)
        parts = dotted.split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SftpackError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = parse_yaml(text) if text != "" else None
    return raw


def build_config(raw: Mapping[str, Any], source: str = "<dict>", trainer: bool = True) -> RunConfig:
    """Validate a raw config mapping and build the typed `RunConfig`.

    Args:
        trainer: also check `train`, `peft` and `model.quantization` against TRL, PEFT and
            transformers (importing them takes seconds; the data stages read model and data only).

    Raises:
        SftpackError: every problem found, one per line, each naming its key.
    """
    if not isinstance(raw, Mapping):
        raise SftpackError(f"{source}: the config must be a mapping with model, data and train sections")
    errors = _schema_errors(raw)
    if trainer:
        errors += (_train_errors(raw["train"]) if isinstance(raw.get("train"), Mapping) else []) + _adapter_errors(raw)
    if not errors:  # pairs of keys, checked once each key is known to be valid on its own
        errors += cross_field_errors(raw)
    if errors:
        lines = "\n  ".join(errors)
        raise SftpackError(f"{source}: invalid config:\n  {lines}")
    return RunConfig(
        model=ModelConfig(**raw["model"]),
        data=DataConfig(**raw["data"]),
        monitor=MonitorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (raw.get("monitor") or {}).items()}),
        train=dict(raw.get("train") or {}),
        peft=dict(raw["peft"]) if raw.get("peft") is not None else None,
        source=source,
    )


def load_config(path: str | Path, overrides: list[str] = (), trainer: bool = True) -> RunConfig:
    """Read a YAML run config, apply dotted overrides, validate it (`trainer`: as build_config).

    Raises:
        SftpackError: missing file, YAML syntax error (with line), or invalid content.
    """
    path = Path(path)
    if not path.is_file():
        raise SftpackError(f"{path}: config file not found")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SftpackError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides))
    return build_config(raw, source=str(path), trainer=trainer)


def write_config(path: str | Path, cfg: RunConfig) -> None:
    """Write the resolved config as YAML, atomically."""
    from sftpack.store.atomic import atomic_file

    with atomic_file(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(cfg.to_dict(), handle, sort_keys=False)
