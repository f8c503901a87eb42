"""Starting hyperparameters by model size: the size table, and the parameter count it is read by.

    parameters (config.json on the meta device, or --params) ──> size row (SIZE_TABLE)

The numbers in SIZE_TABLE live only here; `pipeline/planning/stage.py` fills what flags and the base
config leave out from the row, `pipeline/planning/format.py` shows the row beside the plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sftpack.errors import SftpackError

# A common starting micro-batch when neither a flag nor the base config gives one; the
# accumulation steps keep the effective batch, so lowering it on out-of-memory is safe.
DEFAULT_PER_DEVICE_BATCH = 4

RULES_OF_THUMB = (
    "start at 2e-5 for 7B and larger, 5e-5 for 1-3B, 1e-4 under 1B",
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


# LoRA and QLoRA take about 10x the full fine-tuning peak rate: QLoRA (Dettmers et al. 2023) trains
# 7-13B at 2e-4 and 33-65B at 1e-4, ten times Alpaca's and Tulu 2's 2e-5 and 1e-5; "LoRA Without
# Regret" (Schulman et al., Thinking Machines 2025) finds the best LoRA rate about 10x the full one
# across sizes. The range is 5x to 20x.
LORA_LR_FACTOR = (5, 10, 20)
LORA_LR_SOURCE = ("about 10x the full rate (5-20x): QLoRA, Dettmers et al. 2023 (2e-4 at 7-13B, 1e-4 at 33-65B); "
                  "LoRA Without Regret, Schulman et al. 2025")
LORA_RANK = 16
"""The adapter rank a planned `peft` section gets (QLoRA and LoRA Without Regret: 16-64 all-linear)."""

# Published full-parameter SFT recipes, rounded to one row per size band:
#   under 1B: no published recipe we can cite fixes one value. Models this small take a higher
#           peak LR (2e-5 at 7B, 5e-5 at 1-3B; we double again) and their runs are short, so
#           warmup is 0.1 of the run rather than a few steps. 1e-4 with 0.1 warmup is what
#           configs/demo.yaml trains SmolLM2-135M with.
#   1-3B:   common small-model SFT recipes (e.g. TRL/alignment-handbook style runs on 1-3B
#           models) use a higher peak LR than 7B; 5e-5, batch 32, 3 epochs.
#   7-13B:  Stanford Alpaca (lr 2e-5, batch 128, 3 epochs, warmup 0.03, wd 0, cosine),
#           Vicuna (2e-5, 3 epochs, cosine), Tulu 2 (2e-5 for 7B/13B, warmup 0.03, wd 0).
#   30-70B: Tulu 2 70B (lr 1e-5, batch 128, 2 epochs, warmup 0.03, wd 0), LIMA 65B (1e-5).
# Keep this the only place these numbers live.
SIZE_TABLE: tuple[SizeRow, ...] = (
    SizeRow("under 1B", 1, 1e9 - 1, learning_rate=1e-4, effective_batch_size=32, num_train_epochs=3,
            warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0),
    SizeRow("1-3B", 1e9, 3e9, learning_rate=5e-5, effective_batch_size=32, num_train_epochs=3,
            warmup_ratio=0.03, weight_decay=0.01, max_grad_norm=1.0),
    SizeRow("7-13B", 7e9, 13e9, learning_rate=2e-5, effective_batch_size=64, num_train_epochs=3,
            warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0),
    SizeRow("30-70B", 30e9, 70e9, learning_rate=1e-5, effective_batch_size=128, num_train_epochs=2,
            warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0),
)


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

    Above the last row, the last row is used (the first starts at 1 parameter); in a gap between
    rows, the nearer on a log scale (sizes are multiplicative).

    Returns:
        (row, note); note is None when the count falls inside a row.
    """
    billions = num_params / 1e9
    last = SIZE_TABLE[-1]
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
