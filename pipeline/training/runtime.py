"""Where the model runs: dtype and attention resolved for the visible device, and the model loaded.

    model.dtype, model.attn_implementation ──resolve_runtime──> Runtime (device, dtype, attention, why)
    model.name_or_path + Runtime ──load_model──> (causal LM, tokenizer)
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from sftpack.config.run_config import ModelConfig
from sftpack.errors import SftpackError

logger = logging.getLogger("sftpack.train")


@dataclass(frozen=True)
class Runtime:
    """What `model.dtype` / `model.attn_implementation` resolved to on this machine, and why."""

    device: str
    """cuda (with the GPU name) or cpu."""
    dtype: str
    """bfloat16 | float32."""
    attn_implementation: str
    """flash_attention_2 | sdpa | eager."""
    reason: str
    """One line for the log: why these were chosen."""


def resolve_runtime(model: ModelConfig) -> Runtime:
    """Resolve `auto` dtype and attention for the visible device.

    auto picks bf16 + flash_attention_2 on a CUDA GPU of compute capability >= 8.0 (Ampere or
    newer) with flash-attn installed, bf16 + sdpa on such a GPU without flash-attn, and
    float32 + sdpa on CPU or older GPUs.

    Raises:
        SftpackError: flash_attention_2 or bfloat16 asked for where they cannot run.
    """
    cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if cuda else (0, 0)
    device = f"cuda ({torch.cuda.get_device_name()}, sm_{capability[0]}{capability[1]})" if cuda else "cpu"
    why: list[str] = []
    errors: list[str] = []
    dtype = _resolve_dtype(model.dtype, cuda, device, why, errors)
    attn = _resolve_attention(model.attn_implementation, cuda, cuda and capability >= (8, 0), device, why, errors)
    if errors:
        raise SftpackError("\n  ".join(["cannot run the model as configured:"] + errors))
    return Runtime(device=device, dtype=dtype, attn_implementation=attn,
                   reason="; ".join(why) or "dtype and attention set explicitly")


def _resolve_dtype(dtype: str, cuda: bool, device: str, why: list[str], errors: list[str]) -> str:
    """`model.dtype` for this device; appends the reason for an `auto` choice, or the conflict."""
    if dtype == "auto":
        bf16_ok = cuda and torch.cuda.is_bf16_supported()
        why.append("dtype auto -> " + ("bfloat16 (GPU supports bf16)" if bf16_ok else
                                       "float32 (" + ("GPU without bf16" if cuda else "CPU") + ")"))
        return "bfloat16" if bf16_ok else "float32"
    if dtype == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        errors.append(f"model.dtype bfloat16: this GPU ({device}) has no bf16; use model.dtype=float32")
    return dtype


def _resolve_attention(attn: str, cuda: bool, ampere: bool, device: str, why: list[str], errors: list[str]) -> str:
    """`model.attn_implementation` for this device; appends the reason for an `auto` choice, or the conflicts."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if attn == "auto":
        if ampere and has_flash:
            why.append("attention auto -> flash_attention_2 (flash-attn installed, Ampere or newer)")
            return "flash_attention_2"
        reason = ("no CUDA GPU" if not cuda else "GPU older than Ampere" if not ampere
                  else "flash-attn not installed (pip install flash-attn)")
        why.append(f"attention auto -> sdpa ({reason})")
        return "sdpa"
    if attn == "flash_attention_2":
        if not has_flash:
            errors.append("model.attn_implementation flash_attention_2: flash-attn is not installed; "
                          "pip install flash-attn, or use sdpa")
        if not ampere:
            errors.append(f"model.attn_implementation flash_attention_2: needs an Ampere or newer CUDA GPU, "
                          f"this machine has {device}; use sdpa")
    return attn


def load_model(model: ModelConfig, runtime: Runtime):
    """Load the causal LM and its tokenizer; the pad token falls back to eos.

    Returns:
        (model, tokenizer).

    Raises:
        SftpackError: the model folder is missing or not loadable.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftpack.training.adapters import quantization_config

    path = model.name_or_path
    if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SftpackError(f"model.name_or_path {path}: folder not found (and the hub is offline); "
                           f"run `make model` or point it at a local HF model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, runtime.dtype), attn_implementation=runtime.attn_implementation,
            quantization_config=quantization_config(model.quantization, runtime.dtype))
    except (OSError, ValueError) as err:
        raise SftpackError(f"model.name_or_path {path}: cannot load: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer has no pad token: using eos %r", tokenizer.eos_token)
    return lm, tokenizer
