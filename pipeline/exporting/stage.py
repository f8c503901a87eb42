"""The export stage: a run (or one of its checkpoints) -> a merged full model others load as it is.

    RUN_DIR/final, RUN_DIR/checkpoint-N, or such a folder itself
      adapter (adapter_config.json): base model (its base_model_name_or_path) + adapter, merged
      full fine-tune (config.json):  the weights copied as they are
    + tokenizer (the run's chat template when it trained with data.chat_template)
    + generation_config.json whose eos_token_id holds the stop markers the run trained the model to
      emit (its packed data's manifest, recorded in sftpack_run.json), so generation stops there
      ──format hf──>   OUT/ model.safetensors, config.json, generation_config.json, tokenizer, export.json
      ──format gguf──> the same in a temp folder ──sftpack.exporting.gguf.write_gguf──> OUT/<name>.gguf
                       (+ its Ollama Modelfile), export.json

OUT is written in a temp folder beside it and renamed into place, export.json last. With format gguf
an OUT ending in .gguf is the file itself: it and its Modelfile are each renamed into place beside
it, then export.json is written there (replacing that folder's export.json and Modelfile).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError
from sftpack.exporting.gguf import OUTTYPES  # GGUF weight types: the writer's own list (stdlib imports only)

FORMATS = ("hf", "gguf")
EXPORT_MANIFEST = "export.json"
# What a checkpoint holds besides the model: the optimizer's and trainer's state, never exported. An FSDP
# checkpoint adds accelerate's optimizer.bin and pytorch_model_fsdp*.bin (tests/test_fsdp.py); DeepSpeed's
# adds latest and zero_to_fp32.py (its global_step*/ folders, like FSDP's sharded ones, are folders: skipped).
TRAINING_STATE = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "trainer_state.json", "training_args.bin",
                  "scaler.pt", "latest", "zero_to_fp32.py")
TRAINING_STATE_PREFIXES = ("rng_state", "pytorch_model_fsdp", "optimizer_")


@dataclass(frozen=True)
class ExportConfig:
    format: str = "hf"
    """hf: a transformers folder (safetensors, config, tokenizer); gguf: one GGUF file (llama.cpp, Ollama)."""
    outtype: str = "f16"
    """GGUF weight type: f16 | bf16 | q8_0 (format gguf only)."""

    def __post_init__(self) -> None:
        problems = []
        if self.format not in FORMATS:
            problems.append(f"format {self.format!r}: expected one of {', '.join(FORMATS)}")
        if self.outtype not in OUTTYPES:
            problems.append(f"outtype {self.outtype!r}: expected one of {', '.join(OUTTYPES)}")
        if problems:
            raise SftpackError("export: " + "; ".join(problems))


@dataclass(frozen=True)
class Source:
    """What is exported: the weights folder, and the run it belongs to (None: a bare folder)."""

    weights: Path
    run_dir: Path | None
    adapter: bool


def find_source(source: str | Path) -> Source:
    """RUN_DIR (its final/), or a folder with adapter_config.json or config.json (final/, checkpoint-N).

    Raises:
        SftpackError: neither.
    """
    from sftpack.training.stage import FINAL_DIR, RUN_CONFIG

    path = Path(source)
    if (path / FINAL_DIR).is_dir():
        path = path / FINAL_DIR
    adapter = (path / "adapter_config.json").is_file()
    if not adapter and not (path / "config.json").is_file():
        raise SftpackError(f"{source}: not a run folder (no {FINAL_DIR}/) nor a model or adapter folder (no "
                           f"config.json or adapter_config.json); give the train.output_dir of a finished run, "
                           f"or one of its checkpoint-N folders")
    run_dir = path.parent if (path.parent / RUN_CONFIG).is_file() else None
    return Source(path, run_dir, adapter)


def stop_markers(src: Source) -> tuple[list[str], str]:
    """The stop markers the run trained on, and where they were read; ([], why) when unknown."""
    from sftpack.store.packed_folder import PackedFolder
    from sftpack.training.stage import RUN_CONFIG, RUN_MANIFEST

    if src.run_dir is None:
        return [], "unknown (not inside a run folder): the model's own generation_config.json"
    manifest_path = src.run_dir / RUN_MANIFEST
    if manifest_path.is_file():
        markers = (json.loads(manifest_path.read_text())["data"]["train"].get("stop_markers") or {})
        if markers.get("tokens"):
            return list(markers["tokens"]), f"{manifest_path} (data.train stop_markers, {markers['source']})"
    from sftpack.config.run_config import load_config

    train = load_config(src.run_dir / RUN_CONFIG, trainer=False).data.train
    packed = PackedFolder.at(train) if train else None
    markers = (packed.manifest.get("tokenizer", {}).get("stop_markers") or {}) if packed else {}
    if markers.get("tokens"):
        return list(markers["tokens"]), f"{Path(train) / 'manifest.json'} (stop_markers, {markers['source']})"
    return [], f"unknown ({src.run_dir} has no {RUN_MANIFEST} nor a packed data.train): the model's own"


def _chat_template(src: Source) -> str | None:
    """The run's data.chat_template file, when it trained with one (the tokenizer still holds its own)."""
    from sftpack.config.run_config import load_config
    from sftpack.training.stage import RUN_CONFIG

    if src.run_dir is None:
        return None
    path = load_config(src.run_dir / RUN_CONFIG, trainer=False).data.chat_template
    return Path(path).read_text(encoding="utf-8") if path else None


def _merged(src: Source, tokenizer):
    """The base model with the adapter merged in, in the base's stored dtype; and the base's path."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftpack.training.adapters import fit_vocabulary

    base = json.loads((src.weights / "adapter_config.json").read_text())["base_model_name_or_path"]
    try:  # a folder (relative to where training ran), or a hub model (model.name_or_path=org/name)
        stored = AutoConfig.from_pretrained(base).dtype
    except (OSError, ValueError):
        raise SftpackError(f"{src.weights}/adapter_config.json: base model {base} not found, neither a folder (a "
                           f"path relative to where training ran) nor a hub model this machine can load; run "
                           f"export from there, or edit base_model_name_or_path") from None
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # merge in full precision
    fit_vocabulary(model, tokenizer)  # the rows the adapter's new tokens live in
    merged = PeftModel.from_pretrained(model, str(src.weights)).merge_and_unload()
    return merged.to(stored) if isinstance(stored, torch.dtype) else merged, base


def write_hf(src: Source, dest: Path, stops: list[str]) -> dict[str, Any]:
    """The merged (or copied) model, tokenizer and generation config in `dest`; what was done."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(src.weights)
    template = _chat_template(src)
    if template is not None:
        tokenizer.chat_template = template
    if src.adapter:
        model, base = _merged(src, tokenizer)
        model.save_pretrained(dest)
        generation = model.generation_config
    else:
        base = None
        for path in src.weights.iterdir():
            if path.is_file() and path.name not in TRAINING_STATE and not path.name.startswith(TRAINING_STATE_PREFIXES):
                shutil.copy2(path, dest / path.name)
        generation = (GenerationConfig.from_pretrained(src.weights) if (src.weights / "generation_config.json").is_file()
                      else GenerationConfig())
    tokenizer.save_pretrained(dest)
    eos = generation.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for token in stops:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise SftpackError(f"{src.weights}: stop marker {token!r} is not a token of its tokenizer")
        if token_id not in eos:
            eos.append(token_id)
    generation.eos_token_id = eos[0] if len(eos) == 1 else eos
    generation.save_pretrained(dest)
    return {"method": "adapter" if src.adapter else "full", "base_model": base, "eos_token_id": eos,
            "chat_template_from": "data.chat_template" if template is not None else "tokenizer"}


def _hashes(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    from sftpack.store.fingerprint import sha256_file

    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())
            if p.is_file() and (p.suffix == ".safetensors" if names is None else p.name in names)}


def _gguf(src, gguf_file: Path, stops: list[str], name: str, cfg: ExportConfig) -> tuple[dict, dict]:
    """The merged model in a temp folder beside `gguf_file`, converted by llama.cpp's converter. With
    no stop markers known (not a run's folder) the model's own eos tokens stop it, as the hf export
    keeps them in generation_config.json."""
    from transformers import AutoTokenizer

    from sftpack.exporting.gguf import write_gguf  # optional writer (llama.cpp's gguf package)

    with tempfile.TemporaryDirectory(prefix=".merged-", dir=gguf_file.parent) as merged:
        done = write_hf(src, Path(merged), stops)
        tokenizer = AutoTokenizer.from_pretrained(merged)
        if not stops and not done["eos_token_id"]:
            raise SftpackError(f"{src.weights}: no stop token known (not in a run folder, and no eos_token_id in "
                               "its generation_config.json): export from the run folder, or add eos_token_id")
        gguf = write_gguf(Path(merged), gguf_file, outtype=cfg.outtype, chat_template=tokenizer.chat_template,
                          stop_tokens=stops or tokenizer.convert_ids_to_tokens(done["eos_token_id"]), name=name)
    return done, gguf


def _manifest(cfg: ExportConfig, src, done: dict, stops: list[str], stops_from: str, gguf: dict | None, folder: Path,
              names: list[str]) -> dict[str, Any]:
    from sftpack import __version__

    return {"sftpack_version": __version__, **asdict(cfg), "source": str(src.weights),
            "run": str(src.run_dir) if src.run_dir else None, **done,
            "stop_tokens": gguf["stop_tokens"] if gguf else stops,
            "stop_tokens_from": stops_from, "inputs": _hashes(src.weights), "gguf": gguf,
            "files": _hashes(folder, names)}


def run(source: str | Path, out: str | Path, cfg: ExportConfig = ExportConfig()) -> dict[str, Any]:
    """Export a run's model (see the module docstring); returns the export manifest (OUT/export.json).

    Raises:
        SftpackError: no model or adapter in `source`, its base model missing, a stop marker its
            tokenizer lacks, or (gguf) what the GGUF writer refuses.
    """
    from sftpack.store.atomic import atomic_dir, write_json

    src = find_source(source)
    out = Path(out)
    if cfg.format == "gguf" and out.suffix == ".gguf" and out.is_dir():
        raise SftpackError(f"--out {out}: a folder, not a GGUF file (an older `make export` made such a folder); "
                           f"remove it, or give another --out")
    stops, stops_from = stop_markers(src)
    name = (src.run_dir or src.weights).name
    if cfg.format == "gguf" and out.suffix == ".gguf":  # --out FILE.gguf: the file, Modelfile and export.json beside it
        out.parent.mkdir(parents=True, exist_ok=True)
        done, gguf = _gguf(src, out, stops, out.stem, cfg)
        manifest = _manifest(cfg, src, done, stops, stops_from, gguf, out.parent, [out.name, "Modelfile"])
        write_json(out.parent / EXPORT_MANIFEST, manifest)
        return manifest
    with atomic_dir(out) as tmp:
        if cfg.format == "hf":
            done, gguf = write_hf(src, tmp, stops), None
        else:
            done, gguf = _gguf(src, tmp / f"{name}.gguf", stops, name, cfg)
        manifest = _manifest(cfg, src, done, stops, stops_from, gguf, tmp, [p.name for p in tmp.iterdir()])
        write_json(tmp / EXPORT_MANIFEST, manifest)
    return manifest
