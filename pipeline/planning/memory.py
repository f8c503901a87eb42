"""Memory per GPU of a training run: full fine-tuning, LoRA and QLoRA, by component.

    config.json (or a parameter count) ──ModelShape──> dims: layers, hidden, MLP, heads, vocab
    ModelShape + method + precision + tokens per micro-batch + checkpointing + ranks ──estimate──> Memory

What one rank holds, in bytes (P: parameters, A: adapter parameters, b: bytes per weight in the
training dtype, 2 for bf16 and 4 for float32; adapters and their optimizer are float32, as PEFT
keeps them):

    weights      full, lora: P x b          qlora: linear layers 4-bit (0.5 byte + 1/64 for the
                                            block scales), embeddings and output head at b
    gradients    full: P x b                lora, qlora: A x 4
    optimizer    AdamW keeps two moments per trained parameter in its dtype: full 2 x P x b,
                 lora and qlora 2 x A x 4
    adapter      lora, qlora: A x 4 (the adapter's own weights)
    activations  tokens x per-token bytes: per layer what backward needs (the norms' inputs and
                 outputs, q, k, v, the attention output, the MLP's gate, up, product and
                 down-projection input: 6h + 2kv + 4i values), plus the logits (vocab values in
                 b, and a float32 copy and its gradient for the loss). With activation
                 checkpointing only each layer's input (h values) is kept, and one layer's
                 activations are rebuilt at a time.

`sharded=True` divides weights, gradients and optimizer states by `world_size` (FSDP full
shard / ZeRO-3); activations are per rank either way. Not counted: the framework's own memory
(CUDA context about 0.5 GiB, allocator fragmentation), which is why a plan leaves headroom.
bench/PEFT.md checks the numbers against measured peaks for SmolLM2-135M on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METHODS = ("full", "lora", "qlora")
GIB = 1024**3
HEADROOM = 0.9
"""Share of a GPU's memory a plan may fill (the method here, the strategy in strategy.py): the rest is
the CUDA context, allocator fragmentation and temporaries."""
QUANTIZED_BYTES = 0.5 + 1 / 64
"""bytes per 4-bit weight: 4 bits, and one scale per 64-weight block (double quant shrinks it)."""
ADAPTER_BYTES = 4
"""PEFT keeps adapter weights (and so their gradients and AdamW moments) in float32."""


@dataclass(frozen=True)
class ModelShape:
    """The dims the estimate needs (a Llama-like decoder: attention + gated MLP per layer)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    approximate: bool = False
    """True when guessed from a parameter count alone (no config.json)."""

    @property
    def kv_dim(self) -> int:
        return self.hidden * self.kv_heads // self.heads

    @property
    def linear_parameters(self) -> int:
        """Weights of the decoder layers' linear maps: what LoRA targets and 4-bit quantizes."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return self.layers * (2 * h * h + 2 * h * kv + 3 * h * i)

    @property
    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.linear_parameters + embeddings + self.layers * 2 * self.hidden + self.hidden

    def adapter_parameters(self, rank: int) -> int:
        """LoRA A and B of every linear map of every layer (target_modules all-linear): r x (in + out)."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return self.layers * rank * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i))

    @classmethod
    def from_config(cls, model_dir: str | Path) -> "ModelShape":
        """Read the model's config (transformers' names, so GPT-2's n_embd is hidden_size; the text
        config of multimodal models).

        Raises:
            ValueError: the config has no attention decoder's dims (a Mamba model has no heads).
        """
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir).get_text_config()
        dims = {key: getattr(config, key, None) for key in
                ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")}
        missing = [key for key, value in dims.items() if not isinstance(value, int)]
        if missing:
            raise ValueError(f"model type {config.model_type} has no {', '.join(missing)}")
        heads, hidden = dims["num_attention_heads"], dims["hidden_size"]
        return cls(layers=dims["num_hidden_layers"], hidden=hidden,
                   intermediate=getattr(config, "intermediate_size", None) or 4 * hidden, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads, vocab=dims["vocab_size"],
                   tied=bool(getattr(config, "tie_word_embeddings", False)))

    @classmethod
    def from_parameters(cls, parameters: int) -> "ModelShape":
        """A Llama-like shape of about `parameters`: hidden = 128 x layers (Llama 2 7B: 4096, 32),
        MLP 8/3 x hidden, 32k vocabulary, grouped-query attention past 13B."""
        layers = max(2, round((parameters / (12.5 * 128**2)) ** (1 / 3)))
        hidden = 128 * layers
        heads = max(1, hidden // 128)
        return cls(layers=layers, hidden=hidden, intermediate=int(8 / 3 * hidden), heads=heads,
                   kv_heads=heads if parameters < 20e9 else max(1, heads // 8), vocab=32000, tied=False,
                   approximate=True)


@dataclass(frozen=True)
class Memory:
    """Bytes one rank holds, by component (see the module docstring)."""

    method: str
    weights: float
    gradients: float
    optimizer: float
    adapter: float
    activations: float
    trainable_parameters: int

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.adapter + self.activations

    def gib(self) -> dict[str, float]:
        """Each component and the total in GiB, rounded to 0.01."""
        parts = {key: getattr(self, key) for key in ("weights", "gradients", "optimizer", "adapter", "activations")}
        return {key: round(value / GIB, 2) for key, value in (parts | {"total": self.total}).items()}


def activation_bytes_per_token(shape: ModelShape, dtype_bytes: int, checkpointing: bool) -> float:
    """What backward keeps per token (module docstring); with checkpointing, the layer inputs plus one layer."""
    layer = 6 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate
    logits = shape.vocab * (dtype_bytes + 4 + 4)  # logits, the loss's float32 copy, its gradient
    if checkpointing:
        return (shape.layers * shape.hidden + layer) * dtype_bytes + logits
    return shape.layers * layer * dtype_bytes + logits


def estimate(shape: ModelShape, method: str, *, tokens: int, dtype_bytes: int = 2, checkpointing: bool = False,
             rank: int = 16, world_size: int = 1, sharded: bool = False) -> Memory:
    """Memory per rank for one method.

    Args:
        shape: the model's dims.
        method: full | lora | qlora.
        tokens: tokens in one micro-batch (per_device_train_batch_size x max_length for packed rows).
        dtype_bytes: 2 (bf16) or 4 (float32): the weights' training dtype.
        checkpointing: activation (gradient) checkpointing.
        rank: LoRA rank r (lora, qlora).
        world_size: ranks (GPUs).
        sharded: weights, gradients and optimizer states split over the ranks (FSDP / ZeRO-3);
            False is DDP: every rank holds all of them.

    Returns:
        The Memory of one rank.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {METHODS}")
    share = 1 / world_size if sharded else 1.0
    other = shape.parameters - shape.linear_parameters  # embeddings, head, norms: never quantized
    if method == "full":
        trainable = shape.parameters
        weights, gradients = shape.parameters * dtype_bytes, shape.parameters * dtype_bytes
        optimizer, adapter = 2 * shape.parameters * dtype_bytes, 0.0
    else:
        trainable = shape.adapter_parameters(rank)
        linear = shape.linear_parameters * (QUANTIZED_BYTES if method == "qlora" else dtype_bytes)
        weights = linear + other * dtype_bytes
        gradients, optimizer, adapter = trainable * ADAPTER_BYTES, 2 * trainable * ADAPTER_BYTES, trainable * ADAPTER_BYTES
    activations = tokens * activation_bytes_per_token(shape, dtype_bytes, checkpointing)
    return Memory(method, weights * share, gradients * share, optimizer * share, adapter * share, activations,
                  trainable)


def recommend(totals_gib: dict[str, float], gpu_memory_gib: float) -> str | None:
    """The cheapest method in `totals_gib` that fits in HEADROOM of the GPU: full when full fits;
    None when none fits."""
    for method in METHODS:
        if method in totals_gib and totals_gib[method] <= HEADROOM * gpu_memory_gib:
            return method
    return None
