"""Adapters: LoRA, DoRA and QLoRA on the loaded model, from the run config's `peft` section.

    model.quantization ──check_quantization──> refused before any work where it cannot run (or its values)
    model.quantization ──quantization_config──> BitsAndBytesConfig for from_pretrained (QLoRA)
    model + tokenizer ──fit_vocabulary──> embedding rows for every tokenizer id; the new rows' ids
    model + peft section ──apply_adapter──> PeftModel: only the adapter (and new token rows) train

The wrapping happens on the model object, before the trainer sees it, so every route the trainer
has (packed or unpacked rows, DDP, evaluation per source, resume) trains the adapter the same way.
No `peft` section: the model is returned as it is (full fine-tuning).

Tokens the base vocabulary lacks (a chat template's control tokens added to the tokenizer) get
embedding rows here; with an adapter, those rows alone train (`trainable_token_indices`, on
`lm_head` too when it is not tied to the embeddings), so the model can learn to read and emit
them while every other base weight stays frozen. The adapter saves them with itself.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from sftpack.errors import SftpackError

logger = logging.getLogger("sftpack.train")

DEFAULT_TARGET_MODULES = "all-linear"
"""LoRA on every linear layer but the output head (QLoRA paper: all layers match full fine-tuning)."""


def check_quantization(quantization: Mapping[str, Any] | None) -> None:
    """Refuse `model.quantization` before any work when bitsandbytes is missing or BitsAndBytesConfig
    refuses its values (a wrong type, an unknown dtype, 4 and 8 bits at once; the config check knows
    only its keys).

    bitsandbytes 0.50 runs 4-bit and 8-bit layers on CPU as well as on CUDA GPUs, so its
    presence is what decides (bench/PEFT.md: QLoRA trains on this machine's CPU).

    Raises:
        SftpackError: quantization asked for, bitsandbytes not installed; a value refused.
    """
    if not quantization:
        return
    try:
        quantization_config(quantization, "float32")
    except (TypeError, ValueError, AttributeError) as err:
        raise SftpackError(f"model.quantization: transformers BitsAndBytesConfig refuses it: {err}") from None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise SftpackError("model.quantization needs bitsandbytes, which is not installed: "
                           "pip install 'sftpack[qlora]' (bitsandbytes==0.50.2), or remove model.quantization "
                           "to train the adapter on unquantized weights (LoRA)") from None


def quantization_config(quantization: Mapping[str, Any] | None, dtype: str):
    """The `BitsAndBytesConfig` of `model.quantization` (None without one); the 4-bit compute dtype
    follows the resolved model dtype unless the section names it."""
    if not quantization:
        return None
    from transformers import BitsAndBytesConfig

    values = dict(quantization)
    if values.get("load_in_4bit"):
        values.setdefault("bnb_4bit_compute_dtype", dtype)
    return BitsAndBytesConfig(**values)


def fit_vocabulary(model, tokenizer) -> list[int]:
    """Give every tokenizer id an embedding row; returns the ids of the rows added (empty: none).

    Embeddings larger than the tokenizer (rounded up for speed, as most models ship) are kept.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return []
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    added = list(range(rows, len(tokenizer)))
    logger.info("the tokenizer has %d token(s) the model's embeddings lack (%s): rows added", len(added),
                ", ".join(tokenizer.convert_ids_to_tokens(added[:5])) + (" ..." if len(added) > 5 else ""))
    return added


def lora_config(peft: Mapping[str, Any], new_tokens: list[int], tied: bool):
    """The `LoraConfig` of the `peft` section: its keys as written, target_modules all-linear unless
    given, and the rows of `new_tokens` trainable (embeddings, and `lm_head` unless tied)."""
    from peft import LoraConfig

    values = {"target_modules": DEFAULT_TARGET_MODULES} | dict(peft)
    if new_tokens and values.get("trainable_token_indices") is None and not values.get("modules_to_save"):
        indices = {"embed_tokens": list(new_tokens)}
        if not tied:
            indices["lm_head"] = list(new_tokens)
        values["trainable_token_indices"] = indices
    try:
        return LoraConfig(task_type="CAUSAL_LM", **values)
    except (ValueError, TypeError) as err:
        raise SftpackError(f"peft: PEFT rejects the section: {err}") from None


def apply_adapter(model, tokenizer, peft: Mapping[str, Any] | None, checkpointing: bool, seed: int):
    """The model to train: the model itself (no `peft` section: full fine-tuning), or it wrapped in
    the adapter, with input gradients enabled for activation checkpointing (frozen embeddings would
    otherwise leave the checkpointed blocks without a gradient to recompute for).

    Raises:
        SftpackError: PEFT rejects the section (no target module matched, bad values).
    """
    new_tokens = fit_vocabulary(model, tokenizer)
    if peft is None:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    # The adapter's random init (lora_A) follows train.seed, not whatever ran before in this process:
    # the Trainer seeds only after the model is built.
    from transformers import set_seed

    set_seed(seed)
    try:
        wrapped = get_peft_model(model, lora_config(peft, new_tokens, tied))
    except ValueError as err:
        raise SftpackError(f"peft: cannot put the adapter on {model.config.model_type}: {err}") from None
    head = wrapped.get_output_embeddings()
    if head is not None and hasattr(head, "token_adapter") and not hasattr(head, "bias"):
        # TRL's fused LM head reads lm_head.weight and lm_head.bias; PEFT's TrainableTokensWrapper forwards
        # only `weight` (merged with the new tokens' rows, so their gradient flows): give it the head's bias.
        head.bias = head.token_adapter.base_layer.bias
    if checkpointing:
        wrapped.enable_input_require_grads()
    counts = parameter_counts(wrapped)
    logger.info("adapter %s: %d of %d parameters train (%.2f%%)", "DoRA" if peft.get("use_dora") else "LoRA",
                counts["trainable_parameters"], counts["total_parameters"],
                100 * counts["trainable_parameters"] / counts["total_parameters"])
    return wrapped


def parameter_counts(model) -> dict[str, int]:
    """{trainable_parameters, total_parameters}: tied weights once, 4-bit weights at their real count."""
    if hasattr(model, "get_nb_trainable_parameters"):  # a PeftModel: knows 4-bit packing
        trainable, total = model.get_nb_trainable_parameters()
        return {"trainable_parameters": int(trainable), "total_parameters": int(total)}
    params = list(model.parameters())  # unique: tied weights counted once
    return {"trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            "total_parameters": sum(p.numel() for p in params)}
