"""Where the model runs: dtype and attention resolved for the visible device, and the model loaded.

    model.dtype, model.attn_implementation (+ the model's class: sdpa, flash, attention sinks)
        ──resolve_runtime──> Runtime (device, dtype, attention, why)
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
    """flash_attention_2 | sdpa | eager | a hub kernel (kernels-community/vllm-flash-attn3)."""
    reason: str
    """One line for the log: why these were chosen."""


def resolve_runtime(model: ModelConfig) -> Runtime:
    """Resolve `auto` dtype and attention for the visible device and the model's class.

    auto picks bf16 on a GPU with bf16, float32 elsewhere. Attention: on a CUDA GPU of compute
    capability >= 8.0 (Ampere or newer), flash_attention_2 where flash-attn is installed and the
    model supports it, except for attention with learned sinks (gpt-oss), which flash-attn 2 cannot
    run: there the `kernels` package's kernels-community/vllm-flash-attn3 when installed. Otherwise
    sdpa, or eager where the model class has no sdpa support (gpt-oss, Mamba-2).

    Raises:
        SftpackError: flash_attention_2, sdpa or bfloat16 asked for where they cannot run.
    """
    cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if cuda else (0, 0)
    device = f"cuda ({torch.cuda.get_device_name()}, sm_{capability[0]}{capability[1]})" if cuda else "cpu"
    why: list[str] = []
    errors: list[str] = []
    dtype = _resolve_dtype(model.dtype, cuda, device, why, errors)
    attn = _resolve_attention(model.attn_implementation, _Support.of(model.name_or_path),
                              cuda and capability >= (8, 0), device, why, errors)
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


@dataclass(frozen=True)
class _Support:
    """What the model's class can run (all True when the config cannot be read: load_model says why)."""

    name: str = "the model"
    sdpa: bool = True
    flash: bool = True
    sinks: bool = False

    @classmethod
    def of(cls, path: str) -> "_Support":
        from sftpack.training.isolation import causal_lm_class, has_sinks, model_config

        config = model_config(path)
        model_class = causal_lm_class(config) if config is not None else None
        if model_class is None:
            return cls()
        return cls(name=model_class.__name__, sdpa=bool(getattr(model_class, "_supports_sdpa", False)),
                   flash=bool(getattr(model_class, "_supports_flash_attn", False)), sinks=has_sinks(config))


SINKS_KERNEL = "kernels-community/vllm-flash-attn3"
"""A flash kernel with attention sinks (the `kernels` package fetches it from the hub)."""


def _resolve_attention(attn: str, support: _Support, ampere: bool, device: str, why: list[str],
                       errors: list[str]) -> str:
    """`model.attn_implementation` for this device and model; appends the reason for an `auto` choice, or the conflicts."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    has_kernels = importlib.util.find_spec("kernels") is not None
    fallback = "sdpa" if support.sdpa else "eager"
    no_sdpa = "" if support.sdpa else f"; {support.name} has no sdpa support"
    if attn == "auto":
        if ampere and support.sinks and has_kernels:
            why.append(f"attention auto -> {SINKS_KERNEL} (attention sinks: flash-attn 2 has none; kernels installed)")
            return SINKS_KERNEL
        if ampere and has_flash and support.flash and not support.sinks:
            why.append("attention auto -> flash_attention_2 (flash-attn installed, Ampere or newer)")
            return "flash_attention_2"
        reason = ("no CUDA GPU" if device == "cpu" else "GPU older than Ampere" if not ampere
                  else "attention sinks need a flash kernel with sinks (pip install kernels)" if support.sinks
                  else f"{support.name} has no flash-attention support" if not support.flash
                  else "flash-attn not installed (pip install flash-attn)")
        why.append(f"attention auto -> {fallback} ({reason}{no_sdpa})")
        return fallback
    if attn == "sdpa" and not support.sdpa:
        errors.append(f"model.attn_implementation sdpa: {support.name} has no sdpa support; use eager (or auto)")
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


def unpacked_note(model_path: str | None, totals: dict | None) -> str | None:
    """For `plan` and the report: one sentence when this model cannot keep packed rows apart on this
    machine and trains unpacked (training.isolation's probe, as train runs it: same dtype and device),
    with what that costs in rows (a packed folder's manifest totals), else None."""
    from sftpack.training.isolation import for_run

    if not model_path:
        return None
    try:
        isolation = for_run(model_path, "auto", resolve_runtime(ModelConfig(name_or_path=model_path)))
    except SftpackError:
        return None  # train says why, with the whole config
    if isolation is None or isolation.packed:
        return None
    rows = ""
    if totals and totals.get("rows") and totals.get("sequences_packed"):
        rows = (f": its {totals['rows']} packed rows train as {totals['sequences_packed']} padded rows, one per "
                f"sequence ({totals['sequences_packed'] / totals['rows']:.1f}x the rows per step)")
    return (f"model type {isolation.model_type} with {isolation.attn_implementation} attention trains UNPACKED on "
            f"this machine ({isolation.reason}){rows}; to train packed, {isolation.advice}")
